#!/usr/bin/env bash
# Image build and import benchmark, same run, ratios:
#  1. `banger image build debian:bookworm` against mmdebstrap alone with
#     the same arguments writing its tarball to /dev/null (banger streams
#     that tarball straight into ext4; the difference is banger's cost);
#  2. `banger image import` of that tarball against doing it by hand:
#     `tar -x` into a directory, then `mkfs.ext4 -d`.
#
#   sudo bench/build.sh            # 2 rounds
#   sudo COUNT=3 bench/build.sh
#
# Needs root (mmdebstrap's root mode, tar keeping owners), mmdebstrap and
# the Debian archive. Each side starts after a `sync`, so page-cache
# writeback of the previous run is not charged to the next. Fails when a
# goal is missed:
#   BUILD_MAX_RATIO=1.3        image build / mmdebstrap alone
#   IMPORT_MAX_RATIO=1.2       image import / tar -x + mkfs.ext4 -d
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/lib.sh
count=${COUNT:-2}
if [ "$(id -u)" != 0 ]; then
	echo "bench/build.sh runs mmdebstrap as root: sudo $0" >&2
	exit 1
fi
scripts/build.sh >/dev/null
work=$(mktemp -d /tmp/banger-build-bench.XXXXXX)
export BANGER_HOME=$work/home
# shellcheck disable=SC2317 # called by the trap
cleanup() {
	bin/banger daemon stop >/dev/null 2>&1 || true
	rm -rf "$work"
}
trap cleanup EXIT
pkgs=$(go run ./bench/internal/buildargs)
mirror=$(go run ./bench/internal/buildargs -mirror)
now() { date +%s.%N; }
elapsed() { awk -v a="$t1" -v b="$t0" 'BEGIN { print a - b }'; }
median() { sort -n | awk '{a[NR]=$1} END {print (NR%2) ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2}'; }
: >"$work/mm" ; : >"$work/bg" ; : >"$work/imp" ; : >"$work/hand"
bin/banger daemon status >/dev/null
for i in $(seq "$count"); do
	sync
	t0=$(now)
	# shellcheck disable=SC2086 # $mirror holds one argument per line
	(IFS=$'\n'; mmdebstrap --quiet --variant=apt --mode=auto --format=tar --include="$pkgs" bookworm "$work/rootfs.tar" $mirror)
	t1=$(now)
	elapsed >>"$work/mm"
	sync
	t0=$(now)
	bin/banger image build -q debian:bookworm --name "bench$i" >/dev/null
	t1=$(now)
	elapsed >>"$work/bg"
	bin/banger image rm "bench$i" >/dev/null

	sync
	t0=$(now)
	bin/banger image import -q "$work/rootfs.tar" --name "imp$i" >/dev/null
	t1=$(now)
	elapsed >>"$work/imp"
	bin/banger image rm "imp$i" >/dev/null
	sync
	t0=$(now)
	mkdir "$work/x"
	tar --numeric-owner --xattrs -xf "$work/rootfs.tar" -C "$work/x"
	mkfs.ext4 -q -F -d "$work/x" "$work/hand.ext4" 2G >/dev/null
	t1=$(now)
	elapsed >>"$work/hand"
	rm -rf "$work/x" "$work/hand.ext4"
done
mm=$(median <"$work/mm"); bg=$(median <"$work/bg"); imp=$(median <"$work/imp"); hand=$(median <"$work/hand")
printf 'rounds: %s; tarball %s MiB\n' "$count" "$(($(stat -c %s "$work/rootfs.tar") >> 20))"
printf 'mmdebstrap alone      %6.2f s (median)\n' "$mm"
printf 'banger image build    %6.2f s\n' "$bg"
printf 'tar -x + mkfs.ext4 -d %6.2f s\n' "$hand"
printf 'banger image import   %6.2f s\n' "$imp"
goal "image build / mmdebstrap" "$(ratio "$bg" "$mm")" '<=' "${BUILD_MAX_RATIO:-1.3}"
goal "image import / tar + mkfs" "$(ratio "$imp" "$hand")" '<=' "${IMPORT_MAX_RATIO:-1.2}"
exit "$bench_failed"
