#!/usr/bin/env bash
# `banger vm run --rm -- true` on a warm cache, split into stages, with the
# boot set against the same QEMU command line launched by hand, in one
# run. Needs root and the VM fixtures (eval "$(scripts/vm-fixtures.sh)").
set -euo pipefail
cd "$(dirname "$0")/.."
BANGER_RUN_BENCH=1 go test -timeout 30m -count=1 -run TestVMRunStagesMeasurement -v ./test/integration | grep -E 'run_measure_test|^(ok|FAIL|---)|panic'
