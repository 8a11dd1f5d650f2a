#!/usr/bin/env bash
# Fetches what the VM tests boot, from Debian's archive, into a cache
# directory, and prints the environment variables that point the tests at
# it (eval "$(scripts/vm-fixtures.sh)"):
#   BANGER_TEST_KERNEL_DEB   the current linux-image-*-cloud-amd64 package
#   BANGER_TEST_BUSYBOX_DEB  busybox-static
#   BANGER_TEST_DEBIAN_ROOT  a debootstrap'd Debian with systemd and git
# Needs root (debootstrap) and apt-get download; nothing is installed.
set -euo pipefail
cache=${BANGER_FIXTURES:-/var/cache/banger-test}
mkdir -p "$cache"
cd "$cache"
kpkg=$(apt-cache depends linux-image-cloud-amd64 | awk '/Depends: linux-image-/{print $2; exit}')
if ! ls "$kpkg"_*.deb >/dev/null 2>&1; then
	apt-get download "$kpkg" >&2
fi
if ! ls busybox-static_*.deb >/dev/null 2>&1; then
	apt-get download busybox-static >&2
fi
if [ ! -x debian-root/lib/systemd/systemd ] || [ ! -x debian-root/usr/bin/git ]; then
	rm -rf debian-root
	mirror=$(awk '/^URIs:/{print $2; exit}' /etc/apt/sources.list.d/debian.sources 2>/dev/null || true)
	debootstrap --variant=minbase --include=systemd,systemd-sysv,git bookworm debian-root "${mirror:-http://deb.debian.org/debian}" >&2
fi
echo "export BANGER_TEST_KERNEL_DEB=$cache/$(ls "$kpkg"_*.deb | head -1)"
echo "export BANGER_TEST_BUSYBOX_DEB=$cache/$(ls busybox-static_*.deb | head -1)"
echo "export BANGER_TEST_DEBIAN_ROOT=$cache/debian-root"
