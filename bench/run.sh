#!/usr/bin/env bash
# `banger vm run --rm -- true` on a warm cache, split into stages, with the
# boot set against the same QEMU command line launched by hand, in one
# run. Needs root and the VM fixtures (eval "$(scripts/vm-fixtures.sh)").
# Fails when a goal is missed:
#   RUN_MAX_BOOT_RATIO=1.25   boot (VMM start to agent ready) / by hand
#   RUN_MAX_OWN_PCT=30        banger's own stages (resolve, disk, command,
#                             teardown), percent of the total
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/lib.sh
out=$(go test -timeout 30m -count=1 -run '^$' -bench '^BenchmarkVMRunStages$' -benchtime 1x -v ./test/integration 2>&1) || { echo "$out"; exit 1; }
echo "$out" | grep -E 'run_measure_test|^Benchmark'
goal "boot, banger / by hand" "$(metric "$out" boot-ratio)" '<=' "${RUN_MAX_BOOT_RATIO:-1.25}"
goal "banger's own stages, % of total" "$(metric "$out" own-pct)" '<=' "${RUN_MAX_OWN_PCT:-30}"
exit "$bench_failed"
