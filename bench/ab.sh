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
for m in cold-run-ms warm-run-ms exec-rtt-ms; do
	goal "$m, new / old" "$(metric "$out" "ratio-$m")" '<=' "$max"
done
# Reported, not a goal: bangerd's idle memory, new / old.
rss=$(metric "$out" ratio-idle-rss-MiB)
[ -n "$rss" ] || { echo "FAIL: no idle-rss-MiB in the benchmark's output:" >&2; cat "$work/out" >&2; exit 1; }
printf '%-36s %10s\n' "idle-rss-MiB, new / old" "$rss"
exit "$bench_failed"
