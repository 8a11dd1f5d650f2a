#!/usr/bin/env bash
# Pull benchmark: banger's image pipeline against the first banger's
# (extract to a directory, mkfs.ext4 -d, debugfs ownership fix) and against
# the floor (fetch and decompress only), in one run, on one generated
# multi-layer image served by a registry on loopback.
#
#   bench/pull.sh                 # 300 MiB image, 3 pulls each
#   BANGER_BENCH_MIB=100 COUNT=5 bench/pull.sh
#
# Prints ns/op per method and the ratios; the machine is noisy, so trust
# the ratios more than the absolute times. Fails when banger / baseline
# is above PULL_MAX_RATIO: 0.50 by default for an image of 300 MiB or
# more; for smaller ones, where fixed costs weigh more, 1.00 (no slower
# than the first banger's method: scripts/test.sh pulls 32 MiB once, on
# a busy machine).
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/lib.sh
count=${COUNT:-3}
mib=${BANGER_BENCH_MIB:-300}
out=$(go test -run '^$' -bench 'Pull(Banger|Baseline|Floor|Stages)$' -benchtime "${count}x" ./internal/imagepull 2>&1) || { echo "$out"; exit 1; }
echo "$out" | grep -E '^Benchmark'
banger=$(metric "$out" ns/op BenchmarkPullBanger)
base=$(metric "$out" ns/op BenchmarkPullBaseline)
floor=$(metric "$out" ns/op BenchmarkPullFloor)
echo "image: $mib MiB"
if [ "$mib" -ge 300 ]; then max=${PULL_MAX_RATIO:-0.50}; else max=${PULL_MAX_RATIO:-1.00}; fi
goal "banger / baseline" "$(ratio "$banger" "$base")" '<=' "$max"
echo "banger / floor    = $(ratio "$banger" "$floor")"
echo "baseline / floor  = $(ratio "$base" "$floor")"
exit "$bench_failed"
