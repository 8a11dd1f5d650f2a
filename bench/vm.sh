#!/usr/bin/env bash
# VM start overhead: `banger vm start` to the agent's ready line against
# the same QEMU command line launched by hand to the same line, in one
# run; and bangerd's memory with 10 VMs. Needs the VM fixtures
# (eval "$(scripts/vm-fixtures.sh)") and root. Fails when a goal is
# missed:
#   VM_MAX_RATIO=1.25      banger / by hand, median of 5 starts
#   VM_MAX_RSS_MIB=160     bangerd's resident memory with 10 VMs
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/lib.sh
out=$(go test -timeout 30m -count=1 -run '^$' -bench '^BenchmarkVMOverhead$' -benchtime 1x -v ./test/integration 2>&1) || { echo "$out"; exit 1; }
echo "$out" | grep -E 'vm_measure_test|^Benchmark'
goal "vm start, banger / by hand" "$(metric "$out" start-ratio)" '<=' "${VM_MAX_RATIO:-1.25}"
goal "bangerd MiB with 10 VMs" "$(metric "$out" rss-MiB)" '<=' "${VM_MAX_RSS_MIB:-160}"
exit "$bench_failed"
