#!/usr/bin/env bash
# What containing each VM in a cgroup costs: `banger vm run --rm -- true`
# with and without (BANGER_CGROUPS=off), alternating, in one run. Needs
# root and the VM fixtures (eval "$(scripts/vm-fixtures.sh)").
set -euo pipefail
cd "$(dirname "$0")/.."
BANGER_CGROUP_BENCH=1 go test -timeout 30m -count=1 -run TestCgroupMeasurement -v ./test/integration | grep -E 'cgroups_measure_test|^(ok|FAIL|---)|panic'
