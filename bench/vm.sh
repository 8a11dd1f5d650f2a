#!/usr/bin/env bash
# VM start overhead: `banger vm start` to the agent's ready line against
# the same QEMU command line launched by hand to the same line, in one
# run; and bangerd's memory with 10 VMs. Needs the VM fixtures
# (eval "$(scripts/vm-fixtures.sh)") and root.
set -euo pipefail
cd "$(dirname "$0")/.."
BANGER_VM_BENCH=1 go test -timeout 30m -count=1 -run TestVMOverheadMeasurement -v ./test/integration | grep -E 'vm_measure_test|^(ok|FAIL|---)|panic'
