#!/usr/bin/env bash
# Sets banger up on a fresh Debian 12 machine: installs the packages it
# needs, builds it, and installs banger, bangerd and banger-kubelet to $PREFIX/bin and the
# guest agent to $PREFIX/lib/banger. Run as root: sudo scripts/setup.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PREFIX=${PREFIX:-/usr/local}
export PATH=/usr/local/go/bin:$PATH
if [ "$(id -u)" != 0 ]; then
	echo "setup.sh installs packages and binaries: run it as root (sudo $0)" >&2
	exit 1
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
# e2fsprogs: tune2fs, e2fsck, resize2fs and debugfs build images.
# qemu-system-x86: the VM backend that needs no hardware support.
# mmdebstrap, gpgv, debian-archive-keyring: the default image built from
# the Debian archive when no registry answers, and catalog kernels
# verified against the archive's signed index.
# gpg (the tests sign a Debian archive of their own), curl, shellcheck,
# debootstrap, iproute2, nftables, util-linux (nsenter),
# openssh-client (banger vm ssh uses it; the tests too), bzip2, zsh and
# fish (the tests import a bzip2 rootfs and check each shell takes
# `banger completion`): used by the tests and benchmarks. etcd-server
# and openssl: scripts/kube-control-plane.sh (a control plane for trying
# banger-kubelet, and the Kubernetes tests). dpkg, gcc and libc6-dev: the
# race detector's cgo. nodejs and npm (when the machine has none): the
# e2b SDK the E2B tests drive. git: version stamping.
apt-get install -y -qq --no-install-recommends e2fsprogs ca-certificates curl git shellcheck \
	qemu-system-x86 debootstrap mmdebstrap gpgv gpg debian-archive-keyring iproute2 nftables util-linux openssh-client \
	bzip2 zsh fish etcd-server openssl dpkg gcc libc6-dev >/dev/null
command -v npm >/dev/null || apt-get install -y -qq --no-install-recommends nodejs npm >/dev/null
if ! command -v go >/dev/null; then
	echo "Go 1.26 or newer is needed (https://go.dev/dl/); put it in /usr/local/go" >&2
	exit 1
fi
go mod download
scripts/build.sh
install -m 0755 bin/banger bin/bangerd bin/banger-kubelet "$PREFIX/bin/"
install -d "$PREFIX/lib/banger"
install -m 0755 bin/banger-vsock-agent "$PREFIX/lib/banger/"
# The service (systemd unit, group banger for socket access, directories);
# without systemd, the CLI starts bangerd itself for root.
"$PREFIX/bin/banger" system install
echo "banger installed. Next: banger vm run   (banger doctor checks the host)"
