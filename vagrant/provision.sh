#!/bin/sh
# provision.sh INDEX MODE ADDR...: turns a Debian bookworm VM into meshd
# host node<INDEX> of the hosts with underlay addresses ADDR... (run by the
# Vagrantfile as root, after it uploaded the files to /tmp/meshd-src).
set -eu
[ $# -ge 3 ] || { echo "usage: $0 INDEX MODE ADDR..." >&2; exit 2; }
i=$1
mode=$2
shift 2
src=/tmp/meshd-src
lib=/usr/local/lib/meshd-scenario

if ! command -v wg >/dev/null 2>&1 || ! command -v ping >/dev/null 2>&1; then
	export DEBIAN_FRONTEND=noninteractive
	apt-get update -qq
	apt-get install -y -qq --no-install-recommends wireguard-tools iproute2 iputils-ping >/dev/null
fi

install -D -m 0755 "$src/meshd" /usr/local/bin/meshd
install -d -m 0755 "$lib"
install -m 0755 "$src/lib.sh" "$src/node.sh" "$lib/"
install -d -m 0755 /etc/meshd
install -m 0600 "$src/gossip.key" /etc/meshd/gossip.key
echo "MESHD_NODE_INDEX=$i" >/etc/meshd/node.env
"$lib/node.sh" config "$i" "$mode" "$@" >/etc/meshd/meshd.toml.new
mv /etc/meshd/meshd.toml.new /etc/meshd/meshd.toml
install -m 0644 "$src/meshd.service" "$src/meshd-pod.service" /etc/systemd/system/

systemctl daemon-reload
systemctl enable -q meshd-pod.service meshd.service
systemctl restart meshd-pod.service
# restart, not start: a re-provision brings a new binary or config
systemctl restart meshd.service
sleep 1
systemctl is-active --quiet meshd.service || {
	journalctl -u meshd --no-pager -n 30
	exit 1
}
echo "node$i: meshd running ($(/usr/local/bin/meshd version 2>/dev/null | head -n 1))"
