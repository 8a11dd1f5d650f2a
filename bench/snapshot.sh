#!/usr/bin/env bash
# Warm starts against cold boots, in one run: `vm run --rm -- true`
# split into stages (cold: disk, VMM start, boot; warm: disk, load memory
# and devices, re-identify), the snapshot of a 1 GiB VM (time, guest
# frozen, size on disk) and what ten forks add on disk; then
# Firecracker's snapshot/create and restore timed at the API level with
# the real binary (skipped without one on PATH). Needs root and the VM
# fixtures (eval "$(scripts/vm-fixtures.sh)").
set -euo pipefail
cd "$(dirname "$0")/.."
BANGER_SNAPSHOT_BENCH=1 go test -timeout 30m -count=1 -run TestSnapshotMeasurement -v ./test/integration | grep -E 'snapshot_measure_test|^(ok|FAIL|---)|panic'
go test -count=1 -run TestFirecrackerRestoreAsFork -v ./internal/vmm/firecracker | grep -E 'restore_test|SKIP|^(ok|FAIL|---)|panic'
