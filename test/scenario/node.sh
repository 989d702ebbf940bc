#!/bin/sh
# node.sh: the three-host scenario's steps for one host per machine (the
# Vagrant VMs), using the same config renderer and checks as
# three-hosts.sh (lib.sh).
#
#   node.sh config INDEX MODE ADDR...  print meshd.toml for host INDEX of the
#                                      hosts whose underlay addresses are
#                                      ADDR... (in order; INDEX is 1-based)
#   node.sh pod-up INDEX               create the pod: namespace pod-blue,
#                                      10.42.INDEX.10/24 behind gateway
#                                      10.42.INDEX.1 on link p-blue; ip_forward=1
#   node.sh pod-down                   remove it
#   node.sh check INDEX EXPECT UPTO    bounded wait (MESHD_CHECK_TIMEOUT, 180 s)
#                                      until this pod pings the pods of hosts
#                                      1..UPTO, then check that meshd reports
#                                      mode EXPECT (kernel|userspace|any), a
#                                      matching device and fresh handshakes
#
# Paths follow a packaged install: /etc/meshd/gossip.key, /var/lib/meshd,
# /run/meshd/meshd.sock, interface mesh0, pod namespace pod-blue. Override
# with MESHD_BIN, MESHD_GOSSIP_KEY_FILE, MESHD_DATA_DIR, MESHD_SOCKET,
# MESHD_IFACE, MESHD_POD_NS (say, to try it with namespaces as machines).
#
# A host of a multi-site layout (the Vagrantfile's MESHD_VAGRANT_LAYOUT=
# sites) has /etc/meshd/site.env (MESHD_SITE_ENV), sourced here, setting:
#   MESHD_SITE, MESHD_SITE_GATEWAY (1), MESHD_WAN_ADVERTISE, MESHD_WAN_JOIN,
#   MESHD_SITE_BLOCK   [site], [wan] and site_block (lib.sh's SC_* of the
#                      same names)
#   MESHD_JOIN         the [cluster] seeds (the site's other hosts) instead
#                      of every other ADDR
#   MESHD_SUBNET       this host's slice instead of 10.42.INDEX.0/24
#   MESHD_POD_NET      first three octets of the pod's /24 (10.42.INDEX)
#   MESHD_WAN_VIA      pod-up routes the WAN (MESHD_WAN_NET, 203.0.113.0/24)
#                      through this address: the site's NAT router
#   MESHD_CHECK_PODS   the pod addresses check pings instead of 1..UPTO's

set -u
here=$(cd "$(dirname "$0")" && pwd)
. "$here/lib.sh"
SITE_ENV=${MESHD_SITE_ENV:-/etc/meshd/site.env}
if [ -r "$SITE_ENV" ]; then
	. "$SITE_ENV"
fi

MESHD=${MESHD_BIN:-/usr/local/bin/meshd}
GOSSIP_KEY_FILE=${MESHD_GOSSIP_KEY_FILE:-/etc/meshd/gossip.key}
DATA_DIR=${MESHD_DATA_DIR:-/var/lib/meshd}
SOCK=${MESHD_SOCKET:-/run/meshd/meshd.sock}
IFACE=${MESHD_IFACE:-mesh0}
POD=${MESHD_POD_NS:-pod-blue}
SEG=blue
CIDR=10.42.0.0/16

usage() {
	sed -n '4,35p' "$0" >&2
	exit 2
}

cmd_config() {
	[ $# -ge 3 ] || usage
	i=$1
	mode=$2
	shift 2
	n=0
	me=""
	join=""
	for a in "$@"; do
		n=$((n + 1))
		if [ "$n" = "$i" ]; then me=$a; else join="$join $a:7946"; fi
	done
	[ -n "$me" ] || {
		echo "node.sh: host $i is not among the $n addresses" >&2
		exit 2
	}
	join=${MESHD_JOIN-$join}
	SC_SITE=${MESHD_SITE:-}
	SC_SITE_GATEWAY=${MESHD_SITE_GATEWAY:-0}
	SC_WAN_ADVERTISE=${MESHD_WAN_ADVERTISE:-}
	SC_WAN_JOIN=${MESHD_WAN_JOIN:-}
	SC_SITE_BLOCK=${MESHD_SITE_BLOCK:-}
	meshd_config "node$i" "$DATA_DIR" "$SOCK" "$me" "$join" "$GOSSIP_KEY_FILE" \
		"$IFACE" "$mode" "$SEG" "$CIDR" "${MESHD_SUBNET:-10.42.$i.0/24}" info
}

cmd_pod_up() {
	[ $# -eq 1 ] || usage
	i=$1
	net=${MESHD_POD_NET:-10.42.$i}
	cmd_pod_down
	echo 1 >/proc/sys/net/ipv4/ip_forward
	"$SC_IP" netns add "$POD"
	"$SC_IP" link add name "p-$SEG" type veth peer name eth0 netns "$POD"
	"$SC_IP" addr add "$net.1/24" dev "p-$SEG"
	"$SC_IP" link set "p-$SEG" up
	"$SC_IP" -n "$POD" link set lo up
	"$SC_IP" -n "$POD" addr add "$net.10/24" dev eth0
	"$SC_IP" -n "$POD" link set eth0 up
	"$SC_IP" -n "$POD" route add default via "$net.1" dev eth0
	# The pod unit is the scenario's boot hook, so a NATed site's route to
	# the WAN (the VM's default route is Vagrant's management network)
	# comes back after a reboot too.
	if [ -n "${MESHD_WAN_VIA:-}" ]; then
		"$SC_IP" route replace "${MESHD_WAN_NET:-203.0.113.0/24}" via "$MESHD_WAN_VIA"
	fi
}

cmd_pod_down() {
	"$SC_IP" netns del "$POD" 2>/dev/null
	"$SC_IP" link del "p-$SEG" 2>/dev/null
	return 0
}

pods_reachable() { # I UPTO
	if [ -n "${MESHD_CHECK_PODS:-}" ]; then
		for a in $MESHD_CHECK_PODS; do
			sc_ping "$POD" "$a" || {
				echo "pod of node$1 cannot ping pod $a"
				return 1
			}
		done
		return 0
	fi
	for o in $(seq 1 "$2"); do
		[ "$o" = "$1" ] && continue
		sc_ping "$POD" "10.42.$o.10" || {
			echo "pod of node$1 cannot ping pod of node$o (10.42.$o.10)"
			return 1
		}
	done
}

cmd_check() {
	[ $# -eq 3 ] || usage
	i=$1
	expect=$2
	upto=$3
	bad=0
	systemctl is-active --quiet meshd 2>/dev/null || [ -S "$SOCK" ] || {
		echo "MESH CHECK FAIL node$i: meshd is not running"
		exit 1
	}
	if ! msg=$(sc_wait "${MESHD_CHECK_TIMEOUT:-180}" "pods 1..$upto" pods_reachable "$i" "$upto"); then
		echo "$msg"
		bad=1
	fi
	mode=$(sc_status_field "$SOCK" "$MESHD" mode)
	if [ "$expect" != any ]; then
		msg=$(sc_check_mode "$SOCK" "$MESHD" "$expect") || {
			echo "$msg"
			bad=1
		}
	fi
	msg=$(sc_check_link "" "$IFACE" "$mode") || {
		echo "$msg"
		bad=1
	}
	"$MESHD" status --socket "$SOCK"
	if [ "$upto" -gt 1 ] && ! "$MESHD" status --check --socket "$SOCK" >/dev/null; then
		echo "meshd status --check: some alive peer has no fresh handshake"
		bad=1
	fi
	if [ $bad = 0 ]; then
		echo "MESH CHECK PASS node$i mode=$mode pods 1..$upto reachable"
	else
		echo "MESH CHECK FAIL node$i"
	fi
	exit $bad
}

[ $# -ge 1 ] || usage
c=$1
shift
case $c in
config) cmd_config "$@" ;;
pod-up) cmd_pod_up "$@" ;;
pod-down) cmd_pod_down ;;
check) cmd_check "$@" ;;
*) usage ;;
esac
