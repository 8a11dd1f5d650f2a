#!/usr/bin/env bash
# Copy-on-write restores, two builds of banger against each other in one
# run (BenchmarkCOW): what five forks of a 1 GiB VM holding 256 MiB add
# to the host's Shmem + AnonPages against five copies of the snapshot's
# memory file (goal: at most 0.35x), and eight warm `vm run --rm -- true`
# at once against one after another, and `vm fork -n 8` against eight
# forks one after another (goal: at most 0.6x). OLD and NEW are git
# revisions (default: the commit before copy-on-write restores, and the
# working tree). Needs root and the VM fixtures
# (eval "$(scripts/vm-fixtures.sh)"); wants a quiet host (meminfo is
# the host's).
#   bench/cow.sh [OLD [NEW]]     COW_ROUNDS=1
set -euo pipefail
cd "$(dirname "$0")/.."
old=${1:-8b5a4e5}
new=${2:-}
. bench/lib.sh
work=$(mktemp -d /tmp/banger-cow-XXXXXX)
two_builds "$old" "$new" "$work"
BANGER_AB="$work/old $work/new" go test -timeout 90m -count=1 -run '^$' -bench '^BenchmarkCOW$' \
	-benchtime "${COW_ROUNDS:-1}x" ./test/integration >"$work/out" || { cat "$work/out" >&2; exit 1; }
out=$(grep '^BenchmarkCOW' "$work/out") || no_result bench/cow.sh "$work/out"
metrics "$out"
goal "five forks' memory / five copies" "$(metric "$out" new-fork5-mem-ratio)" '<=' 0.35
goal "8 warm runs at once / one by one" "$(metric "$out" new-run8-ratio)" '<=' 0.6
goal "fork -n 8 / 8 forks one by one" "$(metric "$out" new-fork8-ratio)" '<=' 0.6
exit "$bench_failed"
