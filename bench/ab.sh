#!/usr/bin/env bash
# Two builds of banger against each other in one run, interleaved:
# `vm run --rm -- true` cold and warm, the `vm exec` round trip and
# bangerd's idle memory, each as new/old. OLD and NEW are git revisions
# (default: HEAD~1 and the working tree). Fails when a time ratio is
# above AB_MAX_RATIO (default 1.15: "no change beyond noise" on this
# noisy two-core machine). Needs root and the VM fixtures
# (eval "$(scripts/vm-fixtures.sh)").
#   bench/ab.sh [OLD [NEW]]     AB_ROUNDS=5 AB_MAX_RATIO=1.15
set -euo pipefail
cd "$(dirname "$0")/.."
old=${1:-HEAD~1}
new=${2:-}
. bench/lib.sh
work=$(mktemp -d /tmp/banger-ab-XXXXXX)
two_builds "$old" "$new" "$work"
BANGER_AB="$work/old $work/new" go test -timeout 60m -count=1 -run '^$' -bench '^BenchmarkAB$' \
	-benchtime "${AB_ROUNDS:-5}x" ./test/integration >"$work/out"
out=$(grep '^BenchmarkAB' "$work/out") || no_result bench/ab.sh "$work/out"
# One metric per line: name then value.
metrics "$out"
max=${AB_MAX_RATIO:-1.15}
fail=0
for m in cold-run-ms warm-run-ms exec-rtt-ms idle-rss-MiB; do
	ratio=$(echo "$out" | grep -o "[0-9.]* ratio-$m" | cut -d' ' -f1)
	[ -n "$ratio" ] || { echo "FAIL: no $m in the benchmark's output:" >&2; cat "$work/out" >&2; exit 1; }
	printf '%-14s new/old = %s\n' "$m" "$ratio"
	if [ "$m" != idle-rss-MiB ] && awk -v r="$ratio" -v m="$max" 'BEGIN { exit !(r > m) }'; then
		echo "FAIL: $m ratio $ratio is above $max" >&2
		fail=1
	fi
done
exit $fail
