#!/usr/bin/env bash
# The E2B endpoint driven by the real e2b SDK against banger's own CLI on
# the same host in the same run: time to interactive (Sandbox.create
# until the first commands.run('true') returns) 20 in a row and a burst
# of 10, against `banger vm run --rm -- true`; a command's round trip
# through envd against `banger vm exec`. Needs root, node, the VM
# fixtures (eval "$(scripts/vm-fixtures.sh)") and (cd test/e2b && npm ci).
# TEMPLATE=deb measures the Debian image instead of busybox.
set -euo pipefail
cd "$(dirname "$0")/.."
BANGER_E2B_BENCH=1 go test -timeout 40m -count=1 -run TestE2BMeasurement -v ./test/integration | grep -E 'e2b_measure_test|^(ok|FAIL|---)|panic'
