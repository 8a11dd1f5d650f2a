#!/bin/sh
# banger-network-bootstrap: configure the guest's network from the banger.*
# kernel parameters. Installed at /usr/local/libexec/banger-network-bootstrap
# and run by banger-network.service on images that boot systemd.
#
# Parameters (all optional; nothing is changed for a missing one):
#   banger.iface=eth0          interface to configure
#   banger.ip=10.77.0.2/24     address with prefix length
#   banger.gw=10.77.0.1        default gateway
#   banger.mtu=1500            interface MTU
#   banger.dns=10.77.0.1       resolver written to /etc/resolv.conf
#   banger.hostname=NAME       host name, also added to /etc/hosts
#
# Running it again changes nothing: every step checks before it acts.
set -eu

CMDLINE=${BANGER_CMDLINE:-/proc/cmdline}
ROOT=${BANGER_ROOT:-}

# param NAME prints the value of banger.NAME= from the kernel command line.
param() {
	# The command line is one line of blank-separated words.
	# shellcheck disable=SC2013
	for word in $(cat "$CMDLINE"); do
		case "$word" in
		"banger.$1="*) echo "${word#"banger.$1="}"; return 0 ;;
		esac
	done
	return 0
}

iface=$(param iface)
iface=${iface:-eth0}
ip_cidr=$(param ip)
gw=$(param gw)
mtu=$(param mtu)
dns=$(param dns)
hostname=$(param hostname)

if command -v ip >/dev/null 2>&1 && [ -z "$ROOT" ]; then
	ip link set lo up
	if ip link show "$iface" >/dev/null 2>&1; then
		if [ -n "$mtu" ]; then
			ip link set "$iface" mtu "$mtu"
		fi
		ip link set "$iface" up
		if [ -n "$ip_cidr" ] && ! ip -o addr show dev "$iface" | grep -q " ${ip_cidr} "; then
			ip addr add "$ip_cidr" dev "$iface"
		fi
		if [ -n "$gw" ]; then
			ip route replace default via "$gw" dev "$iface"
		fi
	else
		echo "banger-network-bootstrap: no interface $iface" >&2
	fi
fi

if [ -n "$hostname" ]; then
	if [ "$(cat "$ROOT/etc/hostname" 2>/dev/null)" != "$hostname" ]; then
		echo "$hostname" >"$ROOT/etc/hostname"
	fi
	if [ -z "$ROOT" ] && command -v hostname >/dev/null 2>&1; then
		hostname "$hostname"
	fi
	addr=${ip_cidr%/*}
	addr=${addr:-127.0.1.1}
	line="$addr	$hostname"
	if ! grep -qx "$line" "$ROOT/etc/hosts" 2>/dev/null; then
		grep -v "[[:space:]]$hostname\$" "$ROOT/etc/hosts" 2>/dev/null >"$ROOT/etc/hosts.banger" || true
		echo "$line" >>"$ROOT/etc/hosts.banger"
		mv "$ROOT/etc/hosts.banger" "$ROOT/etc/hosts"
	fi
fi

if [ -n "$dns" ]; then
	want="nameserver $dns"
	if [ "$(cat "$ROOT/etc/resolv.conf" 2>/dev/null)" != "$want" ]; then
		# resolv.conf is often a symlink into /run; replace the link itself.
		rm -f "$ROOT/etc/resolv.conf"
		echo "$want" >"$ROOT/etc/resolv.conf"
	fi
fi
