#!/usr/bin/env bash
# The E2B endpoint driven by the real e2b SDK against banger's own CLI on
# the same host in the same run: time to interactive (Sandbox.create
# until the first commands.run('true') returns) 20 in a row and a burst
# of 10, against `banger vm run --rm -- true`; a command's round trip
# through envd against `banger vm exec`. Needs root, node, the VM
# fixtures (eval "$(scripts/vm-fixtures.sh)") and (cd test/e2b && npm ci).
# TEMPLATE=deb measures the Debian image instead of busybox. Fails when
# a goal is missed:
#   E2B_MAX_RATIO=1.5   the SDK's median time to interactive / vm run's
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/lib.sh
out=$(go test -timeout 40m -count=1 -run '^$' -bench '^BenchmarkE2B$' -benchtime 1x -v ./test/integration 2>&1) || { echo "$out"; exit 1; }
echo "$out" | grep -E 'e2b_measure_test|^Benchmark'
goal "time to interactive, SDK / vm run" "$(metric "$out" tti-ratio)" '<=' "${E2B_MAX_RATIO:-1.5}"
goal "a burst of 10, SDK / vm run" "$(metric "$out" tti-burst-ratio)" '<=' "${E2B_MAX_RATIO:-1.5}"
exit "$bench_failed"
