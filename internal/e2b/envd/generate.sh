#!/usr/bin/env bash
# Regenerates the Go code for envd's protocol (E2B's in-sandbox daemon):
# messages (*.pb.go) and Connect-RPC handlers and clients
# (*connect/*.connect.go) from process/process.proto and
# filesystem/filesystem.proto in this directory. The output is committed:
# CI and builds never run this script and need no protoc.
#
#   internal/e2b/envd/generate.sh                   # regenerate from the .proto copies here
#   internal/e2b/envd/generate.sh /path/to/infra    # first copy the .proto files from a
#                                                   # checkout of github.com/e2b-dev/infra
#
# After copying from a new infra commit, record that commit in README.md.
#
# Needs protoc (Debian: `apt-get install -y protobuf-compiler`, which also
# brings google/protobuf/timestamp.proto) and the Go module proxy: the two
# plugins are installed at the pinned versions below into a temporary
# directory, never onto PATH. Set PROTOC to use another protoc; the
# committed code was made with libprotoc 3.21.12 (only the version comment
# in the headers depends on it).
set -euo pipefail
cd "$(dirname "$0")"

protoc_gen_go_version=v1.36.12     # google.golang.org/protobuf, as in go.mod
protoc_gen_connect_go_version=v1.21.1 # connectrpc.com/connect, as in go.mod
module_dir=banger/internal/e2b/envd

if [ $# -gt 0 ]; then
	infra=$1
	for p in process/process.proto filesystem/filesystem.proto; do
		cp "$infra/packages/envd/spec/$p" "$p"
	done
	echo "copied from e2b-dev/infra $(git -C "$infra" rev-parse HEAD 2>/dev/null || echo '(not a git checkout)'): update README.md" >&2
fi

protoc=${PROTOC:-protoc}
if ! command -v "$protoc" >/dev/null; then
	echo "generate.sh: protoc not found (apt-get install -y protobuf-compiler, or set PROTOC)" >&2
	exit 1
fi
# google/protobuf/timestamp.proto: protoc finds it next to itself or in
# /usr/include; say where when neither has it.
include=()
for d in /usr/include /usr/local/include "$(dirname "$(command -v "$protoc")")/../include"; do
	if [ -f "$d/google/protobuf/timestamp.proto" ]; then
		include=(-I "$d")
		break
	fi
done

tools=$(mktemp -d)
trap 'rm -rf "$tools"' EXIT
GOBIN=$tools go install "google.golang.org/protobuf/cmd/protoc-gen-go@$protoc_gen_go_version"
GOBIN=$tools go install "connectrpc.com/connect/cmd/protoc-gen-connect-go@$protoc_gen_connect_go_version"

# The upstream files carry no go_package (upstream sets it with buf's
# managed mode); M options map each file to its package here, leaving the
# .proto copies byte for byte as upstream has them.
maps=Mprocess/process.proto=$module_dir/process,Mfilesystem/filesystem.proto=$module_dir/filesystem

rm -f process/*.pb.go filesystem/*.pb.go process/processconnect/*.go filesystem/filesystemconnect/*.go
"$protoc" -I . "${include[@]}" \
	--plugin=protoc-gen-go="$tools/protoc-gen-go" \
	--plugin=protoc-gen-connect-go="$tools/protoc-gen-connect-go" \
	--go_out=. --go_opt=paths=source_relative,"$maps" \
	--connect-go_out=. --connect-go_opt=paths=source_relative,"$maps" \
	process/process.proto filesystem/filesystem.proto
gofmt -l . | (! grep .) || { echo "generate.sh: generated code is not gofmt-clean" >&2; exit 1; }
echo "generated: $(find . -name '*.go' | sort | tr '\n' ' ')" >&2
