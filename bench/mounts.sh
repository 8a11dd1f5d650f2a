#!/usr/bin/env bash
# A 10,000-file tree read whole and walked inside a VM: on a virtio-fs
# mount (-v) against the same tree copied onto the VM's own disk, in one
# run. Needs root and the VM fixtures (eval "$(scripts/vm-fixtures.sh)").
set -euo pipefail
cd "$(dirname "$0")/.."
BANGER_MOUNT_BENCH=1 go test -timeout 30m -count=1 -run TestMountMeasurement -v ./test/integration | grep -E 'mounts_measure_test|^(ok|FAIL|---)|panic'
