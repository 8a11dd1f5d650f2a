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
# the ratios more than the absolute times.
set -euo pipefail
cd "$(dirname "$0")/.."
count=${COUNT:-3}
out=$(go test -run '^$' -bench 'Pull(Banger|Baseline|Floor|Stages)$' -benchtime "${count}x" ./internal/imagepull)
echo "$out" | grep -E '^Benchmark'
echo "$out" | awk '
	/^BenchmarkPullBanger/   { banger = $3 }
	/^BenchmarkPullBaseline/ { base = $3 }
	/^BenchmarkPullFloor/    { floor = $3 }
	END {
		if (banger == "" || base == "" || floor == "") { print "missing results"; exit 1 }
		printf "image: %s MiB\n", ENVIRON["BANGER_BENCH_MIB"] == "" ? 300 : ENVIRON["BANGER_BENCH_MIB"]
		mib = ENVIRON["BANGER_BENCH_MIB"] == "" ? 300 : ENVIRON["BANGER_BENCH_MIB"]
		goal = mib >= 300 ? "   (goal: at most 0.50)" : "   (the goal is set for the 300 MiB image; small images carry fixed costs)"
		printf "banger / baseline = %.2f%s\n", banger / base, goal
		printf "banger / floor    = %.2f\n", banger / floor
		printf "baseline / floor  = %.2f\n", base / floor
	}'
