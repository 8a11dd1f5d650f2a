#!/usr/bin/env bash
# What containing each VM in a cgroup costs: `banger vm run --rm -- true`
# with and without (BANGER_CGROUPS=off), alternating, in one run. Needs
# root and the VM fixtures (eval "$(scripts/vm-fixtures.sh)"). Fails when
# the goal is missed:
#   CGROUP_MAX_RATIO=1.2    in cgroups / without, median of 15
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/lib.sh
out=$(go test -timeout 30m -count=1 -run '^$' -bench '^BenchmarkCgroup$' -benchtime 1x -v ./test/integration 2>&1) || { echo "$out"; exit 1; }
echo "$out" | grep -E 'cgroups_measure_test|^Benchmark'
goal "vm run, in cgroups / without" "$(metric "$out" ratio)" '<=' "${CGROUP_MAX_RATIO:-1.2}"
exit "$bench_failed"
