#!/usr/bin/env bash
# Runs every check: formatting, go vet, the whole test suite with the race
# detector, short fuzzes of the layer flattener, the agent's frame
# decoder and its session, the copy extractor, and a small pull benchmark.
# As root, the root-only integration tests run too and a test that would
# skip for lack of a tool fails instead (BANGER_TEST_STRICT=1). The
# skips strict mode allows (internal/testenv's Expected: Firecracker,
# vsock loopback) are listed at the end, so a reader of the log knows
# what was not tested here and why.
set -euo pipefail
cd "$(dirname "$0")/.."
BANGER_TEST_SKIPLOG=$(mktemp /tmp/banger-skips.XXXXXX)
export BANGER_TEST_SKIPLOG
not_tested() {
	if [ -s "$BANGER_TEST_SKIPLOG" ]; then
		echo "not tested here:"
		sort -u "$BANGER_TEST_SKIPLOG" | awk -F '\t' '{ printf "  %s, because %s\n", $1, $2 }'
	fi
	rm -f "$BANGER_TEST_SKIPLOG"
}
trap not_tested EXIT
export PATH=/usr/local/go/bin:$PATH
unformatted=$(gofmt -l $(git ls-files '*.go'))
if [ -n "$unformatted" ]; then
	echo "gofmt: not formatted: $unformatted" >&2
	exit 1
fi
go vet ./...
if [ "$(id -u)" = 0 ]; then
	export BANGER_TEST_STRICT=${BANGER_TEST_STRICT:-1}
	# The VM tests' kernel, busybox and Debian root, unless already given.
	if [ -z "${BANGER_TEST_KERNEL_DEB:-}" ]; then
		eval "$(scripts/vm-fixtures.sh)"
	fi
fi
# The integration and VM packages boot dozens of emulated VMs: more than
# go test's default 10 minutes on two cores.
go test -race -count=1 -timeout 45m ./...
go test -run '^$' -fuzz FuzzFlatten -fuzztime "${FUZZTIME:-20s}" -fuzzminimizetime 2s ./internal/imagepull/flatten
go test -run '^$' -fuzz FuzzReadFrame -fuzztime "${FUZZTIME:-20s}" -fuzzminimizetime 2s ./internal/vsockagent
go test -run '^$' -fuzz FuzzExtractTar -fuzztime "${FUZZTIME:-20s}" -fuzzminimizetime 2s ./internal/vsockagent
go test -run '^$' -fuzz FuzzSession -fuzztime "${FUZZTIME:-20s}" -fuzzminimizetime 2s ./internal/vsockagent
BANGER_BENCH_MIB=${BANGER_BENCH_MIB:-32} COUNT=1 bench/pull.sh
