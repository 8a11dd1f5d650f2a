#!/usr/bin/env bash
# banger on Kubernetes, measured in one run on the same hosts: a pod from
# create to Running against `banger vm run -d` of the same image and
# shape by the same user (both restoring the warm template the first pod
# made), ten pods spread over two nodes, and banger-kubelet's idle CPU
# and memory. Needs root, the VM fixtures (eval "$(scripts/vm-fixtures.sh)")
# and the control plane's binaries (scripts/kube-control-plane.sh DIR).
# ROUNDS=N sets the pod/VM pairs (default 5). Fails when the goal is
# missed:
#   KUBE_MAX_RATIO=1.3   a pod's create to Running / vm run -d, medians
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/lib.sh
out=$(go test -timeout 40m -count=1 -run '^$' -bench '^BenchmarkKube$' -benchtime 1x -v ./test/integration 2>&1) || { echo "$out"; exit 1; }
echo "$out" | grep -E 'kube_measure_test|^Benchmark'
goal "pod to Running / vm run -d" "$(metric "$out" pod-vm-ratio)" '<=' "${KUBE_MAX_RATIO:-1.3}"
exit "$bench_failed"
