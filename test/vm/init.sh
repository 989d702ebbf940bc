#!/bin/sh
# /init of the kernel-WireGuard test VM (built into the initramfs by
# test/vm/run.sh). Runs under busybox sh as PID 1: mounts the basics,
# loads the modules listed in /modules.load in order, runs the three-host
# scenario once per line of /vmtest.runs ("MODE EXPECTED_MODE") and powers
# off. Everything it prints goes to the serial console, which run.sh
# parses: lines start with VMTEST or SCENARIO.
#
# /modules.load names the modules loaded here (with their dependencies);
# anything else the kernel loads on demand through /sbin/modprobe (busybox),
# as on a Debian host. VMTEST MODULES-BEFORE/-AFTER show the difference.

export PATH=/bin:/sbin:/usr/bin:/usr/sbin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null
mkdir -p /dev/pts /dev/net /run /tmp
mount -t devpts devpts /dev/pts
mount -t tmpfs -o mode=0755 tmpfs /run
mount -t tmpfs -o mode=1777 tmpfs /tmp
echo "VMTEST INIT uptime=$(cut -d' ' -f1 /proc/uptime) kernel=$(uname -r)"

. /vmtest.env

while read -r m; do
	[ -n "$m" ] || continue
	modprobe "$m" || echo "VMTEST MODULE-FAILED $m"
done </modules.load
echo "VMTEST MODULES-BEFORE $(cut -d' ' -f1 /proc/modules | sort | tr '\n' ' ')"
# devtmpfs makes /dev/net/tun when tun registers; without it, make it here.
[ -c /dev/net/tun ] || mknod /dev/net/tun c 10 200
hostname vmtest
/sbin/ip link set lo up

n=0
while read -r mode expect; do
	[ -n "$mode" ] || continue
	n=$((n + 1))
	echo "VMTEST RUN mode=$mode expect=$expect uptime=$(cut -d' ' -f1 /proc/uptime)"
	SC_GOSSIP_KEY_FILE=/keys/gossip.key SC_KEYS_DIR=/keys \
		SC_BENCH_SECONDS=$BENCH_SECONDS SC_IPERF3=/usr/bin/iperf3 \
		SC_MESH_TIMEOUT=$MESH_TIMEOUT \
		sh /scenario/three-hosts.sh /bin/meshd /sbin/ip "$mode" "$expect" "/tmp/r$n" </dev/null
	echo "VMTEST RESULT mode=$mode expect=$expect rc=$?"
done </vmtest.runs

echo "VMTEST MODULES-AFTER $(cut -d' ' -f1 /proc/modules | sort | tr '\n' ' ')"
echo "VMTEST DONE uptime=$(cut -d' ' -f1 /proc/uptime)"
sync
poweroff -f
