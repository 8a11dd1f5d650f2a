#!/usr/bin/env bash
# banger on Kubernetes, measured in one run on the same hosts: a pod from
# create to Running against `banger vm run -d` of the same image and
# shape by the same user (both restoring the warm template the first pod
# made), ten pods spread over two nodes, and banger-kubelet's idle CPU
# and memory. Needs root, the VM fixtures (eval "$(scripts/vm-fixtures.sh)")
# and the control plane's binaries (scripts/kube-control-plane.sh DIR).
# ROUNDS=N sets the pod/VM pairs (default 5).
set -euo pipefail
cd "$(dirname "$0")/.."
BANGER_KUBE_BENCH=1 go test -timeout 40m -count=1 -run TestKubeMeasurement -v ./test/integration | grep -E 'kube_measure_test|^(ok|FAIL|---)|panic'
