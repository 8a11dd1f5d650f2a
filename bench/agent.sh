#!/usr/bin/env bash
# The guest agent against plain ssh to the same VM, in one run: exec
# round trips (median of 50) and stream throughput through exec and a
# forwarded port. Needs root and the VM fixtures
# (eval "$(scripts/vm-fixtures.sh)").
set -euo pipefail
cd "$(dirname "$0")/.."
BANGER_AGENT_BENCH=1 go test -timeout 30m -count=1 -run TestAgentVersusSSHMeasurement -v ./test/integration | grep -E 'agent_measure_test|^(ok|FAIL|---)|panic'
