#!/usr/bin/env bash
# Builds banger, bangerd, banger-kubelet and the static guest agent into bin/ with version
# information stamped in.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH=/usr/local/go/bin:$PATH
version=$(git describe --tags --always --dirty 2>/dev/null || echo dev)
commit=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
date=$(date -u +%Y-%m-%dT%H:%M:%SZ)
ldflags="-s -w -X banger/internal/version.Version=$version -X banger/internal/version.Commit=$commit -X banger/internal/version.Date=$date"
mkdir -p bin
go build -trimpath -ldflags "$ldflags" -o bin/ ./cmd/banger ./cmd/bangerd ./cmd/banger-kubelet
# The agent runs inside every guest: static, no cgo.
CGO_ENABLED=0 go build -trimpath -ldflags "$ldflags" -o bin/banger-vsock-agent ./cmd/banger-vsock-agent
echo "built bin/banger bin/bangerd bin/banger-kubelet bin/banger-vsock-agent ($version)"
