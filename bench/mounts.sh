#!/usr/bin/env bash
# A 10,000-file tree read whole, walked and `git status`ed inside a VM:
# on a virtio-fs mount (-v), on a synced mount (-v ...:sync, what
# Firecracker VMs get) and copied onto the VM's own disk, in one run; and
# host write to guest-visible latency, virtio-fs against sync. Needs root
# and the VM fixtures (eval "$(scripts/vm-fixtures.sh)").
set -euo pipefail
cd "$(dirname "$0")/.."
BANGER_MOUNT_BENCH=1 go test -timeout 30m -count=1 -run 'TestMount(Git)?Measurement' -v ./test/integration | grep -E 'mounts_measure_test|^(ok|FAIL|---)|panic'
