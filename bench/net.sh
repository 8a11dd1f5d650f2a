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
set -euo pipefail
cd "$(dirname "$0")/.."
go test -count=1 -run XXX -bench 'VMNetworkSetup|Forward|Guard' -benchtime "${BENCHTIME:-50x}" ./internal/hostnet | grep -E '^Benchmark|^(ok|FAIL)'
go test -count=1 -run XXX -bench DNS -benchtime "${DNS_BENCHTIME:-2s}" ./internal/vmdns | grep -E '^Benchmark|^(ok|FAIL)'
go test -count=1 -run XXX -bench EgressDNS -benchtime "${EGRESS_DNS_BENCHTIME:-5000x}" ./internal/vmnet | grep -E '^Benchmark|^(ok|FAIL)'
go test -count=1 -run XXX -bench SetPolicy -benchtime "${BENCHTIME:-50x}" ./internal/vmnet | grep -E '^Benchmark|^(ok|FAIL)'
