#!/usr/bin/env bash
# The guest agent against plain ssh to the same VM, in one run: exec
# round trips (median of 50) and stream throughput through exec and a
# forwarded port. Needs root and the VM fixtures
# (eval "$(scripts/vm-fixtures.sh)"). Fails when a goal is missed:
#   AGENT_MAX_EXEC_RATIO=0.5     vm exec time / ssh's
#   AGENT_MIN_STREAM_RATIO=0.8   exec -i … cat rate / ssh's
#   AGENT_MIN_FORWARD_RATIO=0.8  vm forward echo rate / ssh -L's
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/lib.sh
out=$(go test -timeout 30m -count=1 -run '^$' -bench '^BenchmarkAgentVersusSSH$' -benchtime 1x -v ./test/integration 2>&1) || { echo "$out"; exit 1; }
echo "$out" | grep -E 'agent_measure_test|^Benchmark'
goal "exec round trip, banger / ssh" "$(metric "$out" exec-ratio)" '<=' "${AGENT_MAX_EXEC_RATIO:-0.5}"
goal "exec stream rate, banger / ssh" "$(metric "$out" stream-ratio)" '>=' "${AGENT_MIN_STREAM_RATIO:-0.8}"
goal "forwarded port rate, banger / ssh" "$(metric "$out" forward-ratio)" '>=' "${AGENT_MIN_FORWARD_RATIO:-0.8}"
exit "$bench_failed"
