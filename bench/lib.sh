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

# two_builds OLD NEW WORK: banger, bangerd and the agent built at git
# revisions OLD and NEW (the working tree when NEW is empty) into
# WORK/old and WORK/new, for one run that measures both. WORK and the
# worktrees go on exit.
two_builds() {
	bench_work=$3
	trap 'git worktree remove --force "$bench_work/src-old" 2>/dev/null || true; git worktree remove --force "$bench_work/src-new" 2>/dev/null || true; rm -rf "$bench_work"' EXIT
	git worktree add -q --detach "$bench_work/src-old" "$1"
	build_into "$bench_work/src-old" "$bench_work/old"
	if [ -n "$2" ]; then
		git worktree add -q --detach "$bench_work/src-new" "$2"
		build_into "$bench_work/src-new" "$bench_work/new"
	else
		build_into . "$bench_work/new"
	fi
	echo "old: $1  new: ${2:-working tree}" >&2
}

# build_into SRC DEST: the three binaries of the checkout SRC into DEST.
build_into() {
	(cd "$1" && go build -o "$2/" ./cmd/banger ./cmd/bangerd && CGO_ENABLED=0 go build -o "$2/" ./cmd/banger-vsock-agent)
}

# metrics OUT: every metric of the benchmark lines in OUT, one "name
# value" per line, sorted.
metrics() {
	echo "$1" | tr '\t' '\n' | sed -n 's/^ *\([0-9.]*\) \([a-z].*\)$/\2 \1/p' | sort
}

# no_result SCRIPT OUT: a benchmark that printed no result line (most
# often skipped: not root, or no VM fixtures) fails with its output.
no_result() {
	echo "$1: no result (skipped? it needs root and the VM fixtures: eval \"\$(scripts/vm-fixtures.sh)\")" >&2
	cat "$2" >&2
	exit 1
}
