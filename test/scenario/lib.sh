# lib.sh: shell functions shared by meshd's multi-host scenarios.
#
# Sourced by three-hosts.sh (three hosts as network namespaces, on a
# machine or inside the test VM of test/vm/run.sh) and by node.sh (one host
# per VM, used by the Vagrantfile). Written for busybox sh as well as
# dash and bash: no arrays, no [[ ]], no process substitution.
#
# Busybox sh runs its built-in `ip` applet whatever PATH says, and that
# applet knows no `type wireguard`, so every ip call goes through $SC_IP,
# the full path of iproute2's ip.
#
# Conventions: a function that "checks" prints nothing and returns 0 when
# all is well, otherwise prints the problem on stdout and returns 1.

SC_IP=${SC_IP:-ip}

sc_log() { echo "scenario: $*"; }

# sc_now prints seconds since boot with centiseconds (/proc/uptime exists
# everywhere, `date +%N` does not in busybox).
sc_now() { cut -d' ' -f1 /proc/uptime; }

# sc_since T0 prints seconds elapsed since sc_now returned T0.
sc_since() { awk -v a="$1" -v b="$(sc_now)" 'BEGIN { printf "%.1f", b - a }'; }

# sc_in NS CMD... runs CMD in network namespace NS, or right here if NS is
# empty (one host per VM).
sc_in() {
	_ns=$1
	shift
	if [ -n "$_ns" ]; then
		"$SC_IP" netns exec "$_ns" "$@"
	else
		"$@"
	fi
}

# sc_toml_string quotes $1 as a TOML basic string (backslash and quote
# escaped; control characters never occur in what we render).
sc_toml_string() {
	printf '"%s"' "$(printf '%s' "$1" | sed 's/\\/\\\\/g; s/"/\\"/g')"
}

# sc_toml_list renders the space-separated words of $1 as the items of a
# TOML array of strings.
sc_toml_list() {
	_list=""
	for _w in $1; do
		_list="${_list:+$_list, }$(sc_toml_string "$_w")"
	done
	printf '%s' "$_list"
}

# meshd_config renders one host's meshd.toml on stdout. It mirrors
# lab.Host.Config; the Vagrant VMs render theirs with it too.
#   meshd_config NODE DATA_DIR CONTROL_SOCKET BIND_ADDR JOIN GOSSIP_KEY_FILE \
#                INTERFACE MODE SEGMENT CIDR SUBNET [LOG_LEVEL]
# JOIN is a space-separated list of host:port seeds (may be empty).
#
# A host of a multi-site mesh (issue 13) also gets [site], on gateways
# [wan], and the segment's site_block, as lab.Host.Config renders them for
# lab.Spec.Sites; BIND_ADDR and JOIN are then the site's private network.
# Set (all optional; without SC_SITE nothing changes):
#   SC_SITE           the site's name
#   SC_SITE_GATEWAY   1 on the site's gateways
#   SC_WAN_ADVERTISE  a gateway's public address (none behind NAT)
#   SC_WAN_JOIN       space-separated host:port of the other sites' public
#                     gateways (WAN serf, port 7947)
#   SC_SITE_BLOCK     the site's block of the segment (SUBNET lies in it)
meshd_config() {
	cat <<EOF
node_name = $(sc_toml_string "$1")
data_dir = $(sc_toml_string "$2")
control_socket = $(sc_toml_string "$3")
log_level = $(sc_toml_string "${12:-debug}")
# Several namespace hosts share one file system: no Docker plugin socket.
docker_plugin_socket = ""

[cluster]
bind_addr = $(sc_toml_string "$4")
bind_port = 7946
join = [$(sc_toml_list "$5")]
gossip_key_file = $(sc_toml_string "$6")
EOF
	if [ -n "${SC_SITE:-}" ]; then
		sc_site_sections
	fi
	cat <<EOF

[wireguard]
interface = $(sc_toml_string "$7")
listen_port = 51820
mode = $(sc_toml_string "$8")

[[segments]]
name = $(sc_toml_string "$9")
cidr = $(sc_toml_string "${10}")
EOF
	if [ -n "${SC_SITE:-}" ]; then
		echo "site_block = $(sc_toml_string "${SC_SITE_BLOCK:-}")"
	fi
	echo "subnet = $(sc_toml_string "${11}")"
}

# sc_site_sections prints [site] and, on a gateway, [wan] (meshd_config's
# SC_* variables).
sc_site_sections() {
	printf '\n[site]\nname = %s\n' "$(sc_toml_string "$SC_SITE")"
	[ "${SC_SITE_GATEWAY:-0}" = 1 ] || return 0
	printf 'gateway = true\n\n[wan]\nbind_addr = "0.0.0.0"\nbind_port = 7947\n'
	if [ -n "${SC_WAN_ADVERTISE:-}" ]; then
		echo "advertise_addr = $(sc_toml_string "$SC_WAN_ADVERTISE")"
	fi
	echo "join = [$(sc_toml_list "${SC_WAN_JOIN:-}")]"
}

# sc_nat_rules WAN_IF [symmetric] prints the nftables ruleset of a site's
# NAT router, as lab's routers load it (lab/site.go): masquerade
# (port-preserving; with "symmetric", random,fully-random) what leaves by
# WAN_IF, and forward what arrives there only if conntrack knows it (the
# rest is counted and dropped).
sc_nat_rules() {
	_masq=masquerade
	[ "${2:-}" = symmetric ] && _masq="masquerade random,fully-random"
	cat <<EOF
table ip lab {
	chain postrouting {
		type nat hook postrouting priority srcnat; policy accept;
		oifname "$1" $_masq
	}
	chain forward {
		type filter hook forward priority filter; policy accept;
		ct state established,related accept
		iifname "$1" counter drop
	}
}
EOF
}

# sc_gossip_key prints a new serf key (base64 of 32 random bytes).
sc_gossip_key() { head -c 32 /dev/urandom | base64 | tr -d '\n'; echo; }

# sc_wg_key prints a new WireGuard private key (wg genkey when present;
# otherwise 32 random bytes, which meshd and the kernel clamp as needed).
sc_wg_key() {
	if command -v wg >/dev/null 2>&1; then wg genkey; else sc_gossip_key; fi
}

# sc_ping NS ADDR: one ping with a 2 s deadline.
sc_ping() { sc_in "$1" ping -c 1 -W 2 "$2" >/dev/null 2>&1; }

# sc_status_field SOCKET MESHD FIELD prints the first string value of
# "FIELD" in `meshd status --json` ("mode" and "public_key" occur first in
# the node section).
sc_status_field() {
	"$2" status --json --socket "$1" 2>/dev/null |
		sed -n "s/^ *\"$3\": *\"\([^\"]*\)\".*/\1/p" | head -n 1
}

# sc_check_mode SOCKET MESHD EXPECTED: node.mode in `meshd status`.
sc_check_mode() {
	_m=$(sc_status_field "$1" "$2" mode)
	[ "$_m" = "$3" ] && return 0
	echo "meshd status reports mode '$_m', want '$3'"
	return 1
}

# sc_check_link NS IFACE MODE: a kernel device is a wireguard link, a
# userspace one a tun.
sc_check_link() {
	_out=$(sc_in "$1" "$SC_IP" -d link show "$2" 2>&1) || {
		echo "interface $2 missing: $_out"
		return 1
	}
	case $3 in
	kernel) _want=wireguard ;;
	*) _want=tun ;;
	esac
	# The kind is the first word of the detail line after link/...
	if printf '%s\n' "$_out" | grep -Eq "^ +$_want( |$)"; then
		return 0
	fi
	echo "interface $2 is not a $_want link:"
	printf '%s\n' "$_out"
	return 1
}

# sc_tunnel_routes NS IFACE [TABLE] lists, sorted, the destinations routed
# into IFACE in the segment table.
sc_tunnel_routes() {
	sc_in "$1" "$SC_IP" route show table "${3:-51800}" 2>/dev/null |
		grep " dev $2\( \|$\)" | awk '{ print $1 }' | sort | tr '\n' ' ' | sed 's/ $//'
}

# sc_check_leftovers NS IFACE: nothing meshd creates survives a stop.
sc_check_leftovers() {
	_bad=0
	if sc_in "$1" "$SC_IP" link show "$2" >/dev/null 2>&1; then
		echo "interface $2 still exists"
		_bad=1
	fi
	for _f in -4 -6; do
		# iproute2 6.1 ignores a protocol filter on `ip rule show`.
		_r=$(sc_in "$1" "$SC_IP" "$_f" rule show 2>/dev/null | grep "proto 149")
		if [ -n "$_r" ]; then
			echo "rules left behind ($_f): $_r"
			_bad=1
		fi
		_r=$(sc_in "$1" "$SC_IP" "$_f" route show table all proto 149 2>/dev/null)
		if [ -n "$_r" ]; then
			echo "routes left behind ($_f): $_r"
			_bad=1
		fi
	done
	if [ -e "/var/run/wireguard/$2.sock" ]; then
		echo "UAPI socket /var/run/wireguard/$2.sock left behind"
		_bad=1
	fi
	return $_bad
}

# sc_wait SECONDS DESCRIPTION CMD...: retry CMD every half second until it
# succeeds or SECONDS pass; on timeout print CMD's last output and fail.
# CMD returning 2 means waiting is pointless (say, meshd died): fail at once.
sc_wait() {
	_deadline=$(awk -v n="$(sc_now)" -v s="$1" 'BEGIN { printf "%.2f", n + s }')
	_what=$2
	shift 2
	while :; do
		_last=$("$@" 2>&1)
		case $? in
		0) return 0 ;;
		2)
			echo "gave up waiting for $_what: $_last"
			return 1
			;;
		esac
		if awk -v n="$(sc_now)" -v d="$_deadline" 'BEGIN { exit !(n > d) }'; then
			echo "timed out waiting for $_what: $_last"
			return 1
		fi
		sleep 0.5
	done
}

# sc_alive PID: the process exists and is not a zombie.
sc_alive() {
	[ -e "/proc/$1" ] && ! grep -q '^State:[[:space:]]*Z' "/proc/$1/status" 2>/dev/null
}

# sc_stop_pid PID [GRACE]: SIGTERM, wait up to GRACE seconds (default 20)
# for the process to end, SIGKILL after that. Returns the exit status (or
# 137 if it had to be killed). PID must be a child of this shell.
sc_stop_pid() {
	_pid=$1
	_grace=${2:-20}
	kill -TERM "$_pid" 2>/dev/null || true
	_i=0
	while [ "$_i" -lt $((_grace * 5)) ]; do
		# A child that exited stays a zombie until waited for.
		if ! sc_alive "$_pid"; then
			wait "$_pid"
			return $?
		fi
		sleep 0.2
		_i=$((_i + 1))
	done
	kill -KILL "$_pid" 2>/dev/null || true
	wait "$_pid" 2>/dev/null
	return 137
}

# sc_iperf_gbps SERVER_NS SERVER_ADDR CLIENT_NS SECONDS IPERF3: TCP
# throughput from client to server in Gbit/s (receiver side), "" on error.
sc_iperf_gbps() {
	sc_in "$1" "$5" -s -1 -D >/dev/null 2>&1 || return 1
	sleep 1
	sc_in "$3" "$5" -c "$2" -t "$4" -f m 2>&1 |
		awk '/receiver/ { for (i = 1; i < NF; i++) if ($(i+1) == "Mbits/sec") v = $i } END { if (v != "") printf "%.4f\n", v / 1000 }'
}
