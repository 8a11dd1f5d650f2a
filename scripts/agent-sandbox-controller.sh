#!/usr/bin/env bash
# Builds agent-sandbox's controller (sigs.k8s.io/agent-sandbox, the
# Kubernetes SIG Apps project for agent sandboxes) from the Go module proxy into
# DIR, for the tests that run it against the control plane of
# kube-control-plane.sh, and for trying it on banger nodes:
#
#   agent-sandbox-controller.sh DIR    build DIR/agent-sandbox-controller
#
# Its CRDs come with the module (k8s/crds in the module cache; DIR/crds
# gets a copy). DIR/stamp records the version and Go that built it; a
# run whose stamp matches builds nothing.
set -euo pipefail

VERSION=v1.0.1
MODULE=sigs.k8s.io/agent-sandbox

[[ $# -eq 1 ]] || { echo "usage: $(basename "$0") DIR" >&2; exit 2; }
mkdir -p -- "$1"
dir=$(cd -- "$1" && pwd -P)
export PATH=/usr/local/go/bin:$PATH
stamp="$MODULE@$VERSION $(go env GOVERSION)"
if [[ -x $dir/agent-sandbox-controller && -f $dir/crds/agents.x-k8s.io_sandboxes.yaml && "$(cat "$dir/stamp" 2>/dev/null)" == "$stamp" ]]; then
	exit 0
fi
echo "agent-sandbox-controller.sh: building $MODULE $VERSION into $dir" >&2
start=$SECONDS
# The controller is its own module (its own k8s.io release), built as is:
# go install with a version needs no module of ours.
(cd "$dir" && GOFLAGS=-mod=mod GOBIN="$dir" go install "$MODULE/cmd/agent-sandbox-controller@$VERSION")
src=$(GOFLAGS=-mod=mod go mod download -json "$MODULE@$VERSION" | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p')
[[ -d $src/k8s/crds ]] || { echo "agent-sandbox-controller.sh: no k8s/crds in $src" >&2; exit 1; }
rm -rf -- "$dir/crds"
cp -r -- "$src/k8s/crds" "$dir/crds"
chmod -R u+w -- "$dir/crds"
echo "$stamp" >"$dir/stamp"
echo "agent-sandbox-controller.sh: built in $((SECONDS - start))s" >&2
