#!/usr/bin/env bash
# Boot benchmark: the same Debian cloud kernel under QEMU microvm, booted
# bare (minimal initramfs), with banger's init stage into a busybox image,
# and into a systemd image, in one run. Needs the VM fixtures
# (eval "$(scripts/vm-fixtures.sh)").
#
#   bench/boot.sh            # 3 boots of each
#   COUNT=5 bench/boot.sh
#
# Fails when a goal is missed, each against the bare boot of the same
# run (the seconds follow the machine's load; the ratios less so):
#   BOOT_MAX_INIT_RATIO=0.5    what banger's init stage adds before a
#                              busybox image is ready / the bare boot
#   BOOT_MAX_SYSTEMD_RATIO=6   a systemd image's agent ready / the bare boot
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
goal "init stage adds / bare boot" "$(awk -v a="$(metric "$out" ready-s BenchmarkBoot/busybox)" -v b="$bare" 'BEGIN { printf "%.2f", (a - b) / b }')" '<=' "${BOOT_MAX_INIT_RATIO:-0.5}"
goal "systemd agent ready / bare boot" "$(ratio "$(metric "$out" ready-s BenchmarkBoot/systemd)" "$bare")" '<=' "${BOOT_MAX_SYSTEMD_RATIO:-6}"
exit "$bench_failed"
