#!/usr/bin/env bash
# VM network costs, each against a baseline in the same run, inside
# network namespaces the benchmarks create and delete (root, nftables):
#   - a VM's network setup and teardown (TAP on the bridge, nftables
#     rules) over netlink, against the same steps as `ip`/`nft` commands;
#   - a TCP stream through a published port (banger's proxy) against the
#     same stream straight to the guest;
#   - the guard that pins each TAP to its VM's MAC and address: a TCP
#     round trip host-guest and one frame's way from a TAP to a host
#     socket, against the same with the guard's chain emptied;
#   - DNS: NAME.vm answered by banger, and a name banger forwards,
#     against the same question asked of the upstream directly
#     (queries per second from parallel clients on loopback);
#   - egress policies: the time banger's DNS takes to answer a guest for
#     a name its allow-list has (forwarded, and the address added to its
#     set) against the same name for a VM without one, and a policy
#     change on a running VM against that VM's network stop and start.
#
# Fails when a goal is missed:
#   NET_MAX_SETUP_RATIO=0.8     a VM's network start and stop / ip and nft
#   NET_MIN_PROXY_RATIO=0.5     TCP through a published port / direct
#   NET_MAX_GUARD_RATIO=1.5     a frame TAP to host socket, guarded / not
#   NET_MIN_DNS_RATIO=0.7       NAME.vm queries/s / the upstream's own
#   NET_MAX_EGRESS_DNS_RATIO=2  an allowed name's answer / an open VM's
#   NET_MAX_POLICY_RATIO=2      a policy change / the VM's network stop
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/lib.sh
run() { # run PKG BENCH BENCHTIME
	local o
	o=$(go test -count=1 -run XXX -bench "$2" -benchtime "$3" "$1" 2>&1) || { echo "$o" >&2; exit 1; }
	echo "$o" | grep -E '^Benchmark|^(ok|FAIL)' >&2
	echo "$o"
}
# A VM's network setup is slow enough for 50 rounds; a frame or a
# stream chunk takes microseconds and needs thousands to rise above noise.
hostnet=$(run ./internal/hostnet 'VMNetworkSetup' "${BENCHTIME:-50x}")
hostnet+=$'\n'$(run ./internal/hostnet 'Forward|Guard' "${FAST_BENCHTIME:-2000x}")
dns=$(run ./internal/vmdns DNS "${DNS_BENCHTIME:-2s}")
egress=$(run ./internal/vmnet EgressDNS "${EGRESS_DNS_BENCHTIME:-5000x}")
policy=$(run ./internal/vmnet SetPolicy "${BENCHTIME:-50x}")
goal "network start+stop, banger / ip+nft" "$(ratio "$(metric "$hostnet" ns/op BenchmarkVMNetworkSetup/banger-create-rm)" "$(metric "$hostnet" ns/op BenchmarkVMNetworkSetup/ip-nft-commands)")" '<=' "${NET_MAX_SETUP_RATIO:-0.8}"
goal "published port rate / direct" "$(ratio "$(metric "$hostnet" MB/s BenchmarkForward/proxy)" "$(metric "$hostnet" MB/s BenchmarkForward/direct)")" '>=' "${NET_MIN_PROXY_RATIO:-0.5}"
goal "frame to host, guarded / unguarded" "$(ratio "$(metric "$hostnet" ns/op BenchmarkGuard/frame/guarded-237)" "$(metric "$hostnet" ns/op BenchmarkGuard/frame/unguarded)")" '<=' "${NET_MAX_GUARD_RATIO:-1.5}"
goal "NAME.vm queries/s / upstream's" "$(ratio "$(metric "$dns" queries/s BenchmarkDNS/local)" "$(metric "$dns" queries/s BenchmarkDNS/direct)")" '>=' "${NET_MIN_DNS_RATIO:-0.7}"
goal "allow-listed DNS answer / open VM's" "$(ratio "$(metric "$egress" µs/answer BenchmarkEgressDNS/allowed)" "$(metric "$egress" µs/answer BenchmarkEgressDNS/open)")" '<=' "${NET_MAX_EGRESS_DNS_RATIO:-2}"
goal "policy change / network stop" "$(ratio "$(metric "$policy" ms/change BenchmarkSetPolicy/others=0/set-policy)" "$(metric "$policy" stop-ms BenchmarkSetPolicy/others=0/stop-start)")" '<=' "${NET_MAX_POLICY_RATIO:-2}"
exit "$bench_failed"
