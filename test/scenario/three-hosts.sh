#!/bin/sh
# three-hosts.sh: meshd's three-host scenario in network namespaces.
#
#   three-hosts.sh MESHD IP MODE EXPECTED_MODE WORKDIR
#
# MESHD is the meshd binary, IP iproute2's ip (a full path: busybox's
# applet cannot create wireguard links), MODE the [wireguard] mode written
# to every host (auto|kernel|userspace), EXPECTED_MODE what `meshd status`
# must report (kernel|userspace), WORKDIR a directory for configs, keys
# and logs (created; keep it short: control sockets live there).
#
# Builds a switch namespace with a bridge, hosts h1..h3 (underlay
# 192.0.2.i/24) and one pod namespace per host (10.42.i.10/24, gateway
# 10.42.i.1 on the host side), runs meshd in every host and checks: every
# pod pings every other pod (bounded), the mode and link kind, the tunnel
# routes; h3 stopped with SIGTERM is dropped by h1 and h2 and leaves
# nothing behind; h3 restarted comes back with the same key; finally all
# stop and nothing is left.
#
# Environment (all optional):
#   SC_PREFIX          name prefix of namespaces and interfaces (default vm)
#   SC_GOSSIP_KEY_FILE gossip key to use (default: generated into WORKDIR)
#   SC_KEYS_DIR        holds h1.key..h3.key, WireGuard private keys to use
#                      (default: meshd creates them; in an early-boot VM
#                      pass them in, entropy may be slow there)
#   SC_MESH_TIMEOUT    seconds allowed for a full mesh, at start and after
#                      the restart (default 120)
#   SC_BENCH_SECONDS   if > 0, measure pod h1 -> pod h2 TCP throughput
#                      with iperf3 for that long (default 0)
#   SC_IPERF3          iperf3 binary (default: iperf3 from PATH)
#   SC_KEEP            1 keeps the namespaces after the run (debugging)
#
# Prints "SCENARIO PASS mode=<m> seconds_to_mesh=<s>" and exits 0, or
# "SCENARIO FAIL <reason>" (after the meshd logs' tails) and exits 1.
# Works with busybox sh, dash and bash.

set -u

if [ $# -ne 5 ]; then
	echo "usage: $0 MESHD IP MODE EXPECTED_MODE WORKDIR" >&2
	exit 2
fi
MESHD=$1
SC_IP=$2
MODE=$3
EXPECT=$4
WORK=$5

here=$(cd "$(dirname "$0")" && pwd)
. "$here/lib.sh"

P=${SC_PREFIX:-vm}
MESH_TIMEOUT=${SC_MESH_TIMEOUT:-120}
BENCH=${SC_BENCH_SECONDS:-0}
IPERF3=${SC_IPERF3:-iperf3}
HOSTS="1 2 3"
SEG=blue
CIDR=10.42.0.0/16
TABLE=51800

sw_ns() { echo "${P}sw"; }
host_ns() { echo "${P}h$1"; }
pod_ns() { echo "${P}h$1p"; }
iface() { echo "${P}h$1"; } # UAPI sockets are shared by all namespaces
under() { echo "192.0.2.$1"; }
subnet() { echo "10.42.$1.0/24"; }
pod_addr() { echo "10.42.$1.10"; }
gw_addr() { echo "10.42.$1.1"; }
hdir() { echo "$WORK/h$1"; }
sock() { echo "$WORK/h$1/meshd.sock"; }

case $MODE in auto | kernel | userspace) ;; *)
	echo "SCENARIO FAIL bad mode '$MODE'"
	exit 2
	;;
esac
[ -x "$MESHD" ] || {
	echo "SCENARIO FAIL meshd '$MESHD' is not executable"
	exit 2
}

# --- teardown ------------------------------------------------------------

kill_netns() {
	for _p in $("$SC_IP" netns pids "$1" 2>/dev/null); do
		kill -KILL "$_p" 2>/dev/null
	done
	"$SC_IP" netns del "$1" 2>/dev/null
}

teardown() {
	for i in $HOSTS; do
		kill_netns "$(pod_ns "$i")"
		kill_netns "$(host_ns "$i")"
		rm -f "/var/run/wireguard/$(iface "$i").sock"
	done
	kill_netns "$(sw_ns)"
}

FAILED=""
# dump_procs: this run's processes with their state and kernel wait
# channel, to tell a blocked meshd from a busy one.
dump_procs() {
	echo "----- processes (pid state wchan cmdline) -----"
	for _d in /proc/[0-9]*; do
		_c=$(tr '\0' ' ' <"$_d/cmdline" 2>/dev/null)
		case $_c in *"$WORK"*) ;; *) continue ;; esac
		echo "${_d#/proc/} $(sed -n 's/^State:[[:space:]]*//p' "$_d/status" 2>/dev/null) $(cat "$_d/wchan" 2>/dev/null) $_c"
	done
}

fail() {
	FAILED=$(echo "$*" | tr '\n' ' ')
	dump_procs
	# A meshd still running when things went wrong prints every
	# goroutine's stack on SIGQUIT: that shows where it is stuck.
	_quit=""
	for i in $HOSTS; do
		_fp=$(pid_of "$i")
		if [ -n "$_fp" ] && sc_alive "$_fp"; then
			kill -QUIT "$_fp" 2>/dev/null && _quit="$_quit $i"
		fi
	done
	[ -n "$_quit" ] && sleep 2
	for i in $HOSTS; do
		if [ -f "$(hdir "$i")/meshd.log" ]; then
			case " $_quit " in
			*" $i "*) _n=${SC_FAIL_LOG_LINES:-400} ;;
			*) _n=40 ;;
			esac
			echo "----- h$i meshd.log (last $_n lines) -----"
			tail -n "$_n" "$(hdir "$i")/meshd.log"
		fi
	done
	if command -v dmesg >/dev/null 2>&1; then
		echo "----- dmesg (last 20 lines) -----"
		dmesg 2>/dev/null | tail -n 20
	fi
	for i in $HOSTS; do
		echo "----- h$i routes / rules -----"
		sc_in "$(host_ns "$i")" "$SC_IP" route show table all 2>&1 | grep -v "table local" | head -n 20
		sc_in "$(host_ns "$i")" "$SC_IP" rule show 2>&1
	done
	stop_all_quiet
	[ "${SC_KEEP:-0}" = 1 ] || teardown
	echo "SCENARIO FAIL mode=$EXPECT $FAILED"
	exit 1
}

# --- lab -------------------------------------------------------------------

sysctl_in() { # NS KEY VALUE: KEY like net/ipv4/ip_forward
	sc_in "$1" sh -c "echo $3 > /proc/sys/$2" 2>/dev/null
}

build_lab() {
	sw=$(sw_ns)
	"$SC_IP" netns add "$sw" || return 1
	"$SC_IP" -n "$sw" link set lo up
	# No STP, no forward delay: ports forward as soon as they are up.
	"$SC_IP" -n "$sw" link add name br0 type bridge stp_state 0 forward_delay 0 || return 1
	"$SC_IP" -n "$sw" link set br0 up || return 1
	for i in $HOSTS; do
		h=$(host_ns "$i")
		p=$(pod_ns "$i")
		"$SC_IP" netns add "$h" || return 1
		"$SC_IP" -n "$h" link set lo up
		for k in net/ipv4/ip_forward net/ipv6/conf/all/forwarding; do
			sysctl_in "$h" $k 1
		done
		for k in net/ipv4/conf/all/rp_filter net/ipv4/conf/default/rp_filter \
			net/ipv6/conf/all/accept_dad net/ipv6/conf/default/accept_dad; do
			sysctl_in "$h" $k 0
		done
		"$SC_IP" -n "$sw" link add name "h$i" type veth peer name u0 netns "$h" || return 1
		"$SC_IP" -n "$sw" link set "h$i" master br0 || return 1
		"$SC_IP" -n "$sw" link set "h$i" up || return 1
		"$SC_IP" -n "$h" addr add "$(under "$i")/24" dev u0 || return 1
		"$SC_IP" -n "$h" link set u0 up || return 1

		"$SC_IP" netns add "$p" || return 1
		"$SC_IP" -n "$p" link set lo up
		"$SC_IP" -n "$h" link add name "p-$SEG" type veth peer name eth0 netns "$p" || return 1
		sysctl_in "$h" "net/ipv4/conf/p-$SEG/rp_filter" 0
		"$SC_IP" -n "$h" addr add "$(gw_addr "$i")/24" dev "p-$SEG" || return 1
		"$SC_IP" -n "$h" link set "p-$SEG" up || return 1
		"$SC_IP" -n "$p" addr add "$(pod_addr "$i")/24" dev eth0 || return 1
		"$SC_IP" -n "$p" link set eth0 up || return 1
		"$SC_IP" -n "$p" route add default via "$(gw_addr "$i")" dev eth0 || return 1
	done
}

write_configs() {
	mkdir -p "$WORK" || return 1
	gk=${SC_GOSSIP_KEY_FILE:-$WORK/gossip.key}
	if [ ! -s "$gk" ]; then
		(umask 077 && sc_gossip_key >"$gk") || return 1
	fi
	for i in $HOSTS; do
		d=$(hdir "$i")
		mkdir -p "$d/data" && chmod 700 "$d/data" || return 1
		if [ -n "${SC_KEYS_DIR:-}" ] && [ -s "$SC_KEYS_DIR/h$i.key" ] && [ ! -e "$d/data/wireguard.key" ]; then
			(umask 077 && cp "$SC_KEYS_DIR/h$i.key" "$d/data/wireguard.key") || return 1
		fi
		join=""
		for o in $HOSTS; do
			[ "$o" = "$i" ] || join="$join $(under "$o"):7946"
		done
		meshd_config "h$i" "$d/data" "$(sock "$i")" "$(under "$i")" "$join" "$gk" \
			"$(iface "$i")" "$MODE" "$SEG" "$CIDR" "$(subnet "$i")" debug >"$d/meshd.toml" || return 1
	done
}

# --- meshd processes ---------------------------------------------------------

start_host() {
	d=$(hdir "$1")
	echo "=== start $(date) ===" >>"$d/meshd.log"
	"$SC_IP" netns exec "$(host_ns "$1")" "$MESHD" run --config "$d/meshd.toml" >>"$d/meshd.log" 2>&1 &
	eval "PID_$1=$!"
}

pid_of() { eval "echo \${PID_$1:-}"; }

# stop_host I: SIGTERM, bounded; fails (reason in STOP_MSG) unless meshd
# exits 0. Not in a subshell: only this shell can wait for its children.
stop_host() {
	STOP_MSG=""
	_sp=$(pid_of "$1")
	[ -n "$_sp" ] || return 0
	eval "PID_$1="
	sc_stop_pid "$_sp" 20
	_rc=$?
	[ $_rc -eq 0 ] && return 0
	STOP_MSG="h$1: meshd exited with status $_rc after SIGTERM"
	return 1
}

stop_all_quiet() {
	for i in $HOSTS; do
		stop_host "$i" >/dev/null 2>&1
	done
}

# --- checks -------------------------------------------------------------------

# all_alive: every meshd started is still running (status 2 otherwise, so
# sc_wait stops waiting).
all_alive() {
	for i in $HOSTS; do
		_ap=$(pid_of "$i")
		if [ -n "$_ap" ] && ! sc_alive "$_ap"; then
			echo "h$i: meshd exited: $(tail -n 1 "$(hdir "$i")/meshd.log")"
			return 2
		fi
	done
}

# full_mesh HOSTS...: every pod of HOSTS answers every other one.
full_mesh() {
	all_alive || return 2
	for a in "$@"; do
		for b in "$@"; do
			[ "$a" = "$b" ] && continue
			if ! sc_ping "$(pod_ns "$a")" "$(pod_addr "$b")"; then
				echo "pod h$a cannot ping pod h$b ($(pod_addr "$b"))"
				return 1
			fi
		done
	done
}

# routes_are I WANT: h_I's tunnel routes are exactly WANT.
routes_are() {
	got=$(sc_tunnel_routes "$(host_ns "$1")" "$(iface "$1")" $TABLE)
	[ "$got" = "$2" ] && return 0
	echo "h$1 routes [$got] into $(iface "$1"), want [$2]"
	return 1
}

# dropped I J: h_I no longer routes h_J's slice.
dropped() {
	if sc_tunnel_routes "$(host_ns "$1")" "$(iface "$1")" $TABLE | tr ' ' '\n' | grep -qx "$(subnet "$2")"; then
		echo "h$1 still routes $(subnet "$2") into $(iface "$1")"
		return 1
	fi
}

# --- the scenario -------------------------------------------------------------

sc_log "mode=$MODE expect=$EXPECT meshd=$MESHD ip=$SC_IP work=$WORK"
teardown # leftovers of an earlier run with the same prefix
rm -rf "$WORK"
trap 'stop_all_quiet; [ "${SC_KEEP:-0}" = 1 ] || teardown' EXIT
trap 'echo "SCENARIO FAIL mode=$EXPECT interrupted"; exit 1' INT TERM

build_lab || fail "could not build the namespaces"
write_configs || fail "could not write the configs"

t0=$(sc_now)
for i in $HOSTS; do start_host "$i"; done
msg=$(sc_wait "$MESH_TIMEOUT" "full mesh" full_mesh $HOSTS) || fail "$msg"
to_mesh=$(sc_since "$t0")
sc_log "full mesh after ${to_mesh}s"

for i in $HOSTS; do
	msg=$(sc_check_mode "$(sock "$i")" "$MESHD" "$EXPECT") || fail "h$i: $msg"
	msg=$(sc_check_link "$(host_ns "$i")" "$(iface "$i")" "$EXPECT") || fail "h$i: $msg"
	want=""
	for o in $HOSTS; do
		[ "$o" = "$i" ] || want="$want $(subnet "$o")"
	done
	want=$(echo $want | tr ' ' '\n' | sort | tr '\n' ' ' | sed 's/ $//')
	msg=$(sc_wait 30 "h$i routes" routes_are "$i" "$want") || fail "$msg"
done
sc_log "every host reports mode $EXPECT, a $EXPECT device and routes to both others"
sc_in "$(host_ns 1)" "$SC_IP" -d link show "$(iface 1)" | sed 's/^/scenario:   /'

if [ "$BENCH" -gt 0 ] 2>/dev/null; then
	if command -v "$IPERF3" >/dev/null 2>&1; then
		g=$(sc_iperf_gbps "$(pod_ns 2)" "$(pod_addr 2)" "$(pod_ns 1)" "$BENCH" "$IPERF3")
		echo "SCENARIO BENCH mode=$EXPECT gbps=${g:-error} seconds=$BENCH path=pod-h1->pod-h2"
	else
		echo "SCENARIO BENCH mode=$EXPECT gbps=none (no iperf3)"
	fi
fi

key3=$(sc_status_field "$(sock 3)" "$MESHD" public_key)
t1=$(sc_now)
stop_host 3 || fail "$STOP_MSG"
for i in 1 2; do
	msg=$(sc_wait 30 "h$i to drop h3" dropped "$i" 3) || fail "$msg"
done
sc_log "h3 stopped (SIGTERM) and dropped by h1 and h2 after $(sc_since "$t1")s"
if sc_ping "$(pod_ns 1)" "$(pod_addr 3)"; then
	fail "pod h1 still reaches pod h3 after h3 stopped"
fi
msg=$(sc_check_leftovers "$(host_ns 3)" "$(iface 3)") || fail "h3 after stop: $msg"

t1=$(sc_now)
start_host 3
msg=$(sc_wait "$MESH_TIMEOUT" "full mesh after h3 restart" full_mesh $HOSTS) || fail "$msg"
sc_log "h3 restarted, full mesh again after $(sc_since "$t1")s"
k=$(sc_status_field "$(sock 3)" "$MESHD" public_key)
[ -n "$k" ] && [ "$k" = "$key3" ] || fail "h3 came back with key '$k', was '$key3'"

for i in $HOSTS; do
	stop_host "$i" || fail "$STOP_MSG"
	msg=$(sc_check_leftovers "$(host_ns "$i")" "$(iface "$i")") || fail "h$i after stop: $msg"
done
sc_log "all stopped, no interface, rule, route or socket left"

echo "SCENARIO PASS mode=$EXPECT seconds_to_mesh=$to_mesh"
exit 0
