# shellcheck shell=bash disable=SC2034
# Sourced by the bench scripts: read a metric off `go test -bench`
# output and check it against a goal. A script ends with
# `exit "$bench_failed"`, so a missed goal fails it.

# shellcheck disable=SC2034 # read by the scripts that source this
bench_failed=0

# metric OUT UNIT [BENCH]: the value reported with UNIT on the first
# benchmark line of OUT (whose name starts with BENCH, when given).
metric() {
	echo "$1" | awk -v u="$2" -v b="${3:-Benchmark}" 'index($1, b) == 1 {
		for (i = 3; i < NF; i++) if ($(i + 1) == u) { print $i; exit }
	}'
}

# goal WHAT VALUE OP LIMIT: prints VALUE against the goal (OP is <= or
# >=) and records a miss; an empty VALUE (the benchmark did not report
# it) is a miss too.
goal() {
	local what=$1 value=$2 op=$3 limit=$4
	if [ -z "$value" ]; then
		printf '%-36s %10s   goal %s %s: MISSED (no value)\n' "$what" "-" "$op" "$limit"
		bench_failed=1
	elif awk -v v="$value" -v l="$limit" -v op="$op" 'BEGIN { exit !((op == "<=" && v + 0 <= l + 0) || (op == ">=" && v + 0 >= l + 0)) }'; then
		printf '%-36s %10s   goal %s %s: met\n' "$what" "$value" "$op" "$limit"
	else
		printf '%-36s %10s   goal %s %s: MISSED\n' "$what" "$value" "$op" "$limit"
		bench_failed=1
	fi
}

# ratio A B: A / B to two decimals.
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", a / b }'; }
