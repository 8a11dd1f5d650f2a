#!/usr/bin/env bash
# Warm starts against cold boots, in one run: `vm run --rm -- true`
# split into stages (cold: disk, VMM start, boot; warm: disk, load memory
# and devices, re-identify), the snapshot of a 1 GiB VM (time, guest
# frozen, size on disk) and what ten forks add on disk; then
# Firecracker's snapshot/create and restore timed at the API level with
# the real binary (skipped without one on PATH). Needs root and the VM
# fixtures (eval "$(scripts/vm-fixtures.sh)"). Fails when a goal is
# missed:
#   SNAP_MAX_WARM_RATIO=0.8     warm run / cold run
#   SNAP_MAX_FROZEN_MS=250      guest frozen by the idle 1 GiB snapshot
#   SNAP_MAX_FORK_MIB=32        disk one fork of it adds
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/lib.sh
out=$(go test -timeout 30m -count=1 -run '^$' -bench '^BenchmarkSnapshot$' -benchtime 1x -v ./test/integration 2>&1) || { echo "$out"; exit 1; }
echo "$out" | grep -E 'snapshot_measure_test|^Benchmark'
go test -count=1 -run TestFirecrackerRestoreAsFork -v ./internal/vmm/firecracker | grep -E 'restore_test|SKIP|not tested|^(ok|FAIL|---)|panic'
goal "vm run, warm / cold" "$(metric "$out" warm-ratio)" '<=' "${SNAP_MAX_WARM_RATIO:-0.8}"
goal "guest frozen, idle snapshot (ms)" "$(metric "$out" frozen-idle-ms)" '<=' "${SNAP_MAX_FROZEN_MS:-250}"
goal "disk per fork (MiB)" "$(metric "$out" fork-disk-MiB)" '<=' "${SNAP_MAX_FORK_MIB:-32}"
exit "$bench_failed"
