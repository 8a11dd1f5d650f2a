#!/usr/bin/env bash
# Boot benchmark: the same Debian cloud kernel under QEMU microvm, booted
# bare (minimal initramfs), with banger's init stage into a busybox image,
# and into a systemd image, in one run. Needs the VM fixtures
# (eval "$(scripts/vm-fixtures.sh)").
#
#   bench/boot.sh            # 3 boots of each
#   COUNT=5 bench/boot.sh
#
# Fails when a goal is missed:
#   BOOT_MAX_ADDED_S=0.6       what banger's init stage adds to the bare
#                              boot before a busybox image is ready
#   BOOT_MAX_SYSTEMD_S=15      a systemd image's agent ready
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/lib.sh
count=${COUNT:-3}
out=$(go test -run '^$' -bench 'Boot' -benchtime "${count}x" -v ./test/vm 2>&1) || { echo "$out"; exit 1; }
echo "$out" | grep -E '^(Benchmark|    bench_test)'
echo "$out" | awk '
	/^BenchmarkBoot\/bare/    { for (i = 3; i <= NF; i++) if ($(i+1) == "ready-s") bare = $i }
	/^BenchmarkBoot\/busybox/ { for (i = 3; i <= NF; i++) { if ($(i+1) == "ready-s") bb = $i; if ($(i+1) == "init-s") bbinit = $i } }
	/^BenchmarkBoot\/systemd/ { for (i = 3; i <= NF; i++) { if ($(i+1) == "ready-s") sd = $i; if ($(i+1) == "image-init-s") sdinit = $i } }
	END {
		if (bare == "" || bb == "") { print "missing results"; exit 1 }
		printf "bare boot to /init:               %.3f s\n", bare
		printf "busybox: init stage %.3f s, ready %.3f s: banger adds %.3f s (%.0f%% of the bare boot)\n", bbinit, bb, bb - bare, 100 * (bb - bare) / bare
		if (sd != "") printf "systemd: systemd started at %.3f s, agent ready %.3f s\n", sdinit, sd
	}'
bare=$(metric "$out" ready-s BenchmarkBoot/bare)
goal "init stage adds (s)" "$(awk -v a="$(metric "$out" ready-s BenchmarkBoot/busybox)" -v b="$bare" 'BEGIN { printf "%.3f", a - b }')" '<=' "${BOOT_MAX_ADDED_S:-0.6}"
goal "systemd agent ready (s)" "$(metric "$out" ready-s BenchmarkBoot/systemd)" '<=' "${BOOT_MAX_SYSTEMD_S:-15}"
exit "$bench_failed"
