#!/usr/bin/env bash
# A 10,000-file tree read whole, walked and `git status`ed inside a VM:
# on a virtio-fs mount (-v), on a synced mount (-v ...:sync, what
# Firecracker VMs get) and copied onto the VM's own disk, in one run; and
# host write to guest-visible latency, virtio-fs against sync. Needs root
# and the VM fixtures (eval "$(scripts/vm-fixtures.sh)"). Fails when a
# goal is missed (ratios against the same work on the VM's own disk; the
# goals sit above what one run on a loaded 2-core machine measured:
# synced 1.1× to read and 3.1× for git status (not looked into);
# virtio-fs 24× and 35×, every file operation a round trip to virtiofsd
# under emulation):
#   MOUNT_MAX_SYNC_RATIO=1.5       full read, synced copy
#   MOUNT_MAX_SYNC_GIT_RATIO=4     git status, synced copy
#   MOUNT_MAX_VIRTIOFS_RATIO=50    full read and git status, virtio-fs
#   MOUNT_MAX_VISIBLE_MS=500       host write to guest-visible, either
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/lib.sh
out=$(go test -timeout 30m -count=1 -run '^$' -bench '^BenchmarkMount(Git)?$' -benchtime 1x -v ./test/integration 2>&1) || { echo "$out"; exit 1; }
echo "$out" | grep -E 'mounts_measure_test|^Benchmark'
goal "full read, synced / disk" "$(metric "$out" read-sync-ratio)" '<=' "${MOUNT_MAX_SYNC_RATIO:-1.5}"
goal "full read, virtio-fs / disk" "$(metric "$out" read-virtiofs-ratio)" '<=' "${MOUNT_MAX_VIRTIOFS_RATIO:-50}"
goal "git status, synced / disk" "$(metric "$out" git-sync-ratio)" '<=' "${MOUNT_MAX_SYNC_GIT_RATIO:-4}"
goal "git status, virtio-fs / disk" "$(metric "$out" git-virtiofs-ratio)" '<=' "${MOUNT_MAX_VIRTIOFS_RATIO:-50}"
goal "host write visible, virtio-fs (ms)" "$(metric "$out" visible-virtiofs-ms)" '<=' "${MOUNT_MAX_VISIBLE_MS:-500}"
goal "host write visible, sync (ms)" "$(metric "$out" visible-sync-ms)" '<=' "${MOUNT_MAX_VISIBLE_MS:-500}"
exit "$bench_failed"
