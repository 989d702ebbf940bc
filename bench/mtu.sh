#!/usr/bin/env bash
# mtu.sh: with meshd's default MTU (mtu = 0: underlay MTU - 60 on an IPv4
# underlay), check on a 1500- and a 1400-byte underlay that the tunnel gets
# that MTU, that the largest DF ping and a full-size TCP stream cross
# without fragmenting the underlay or dropping packets, and what happens to
# a 1400-byte UDP datagram (delivered when it fits; otherwise what the
# sender actually sees is reported). Exits non-zero if a check failed.
#
#   sudo bench/mtu.sh [UNDERLAY_MTU...]      (default: 1500 1400)
set -euo pipefail
[ "$(id -u)" = 0 ] || { echo "mtu.sh: needs root (network namespaces)" >&2; exit 2; }
for tool in ip iperf3 ss ping go; do
  command -v $tool >/dev/null || { echo "mtu.sh: $tool not found (apt-get install --no-install-recommends iperf3 iproute2 iputils-ping)" >&2; exit 2; }
done
UNDERLAYS=$(IFS=,; echo "${*:-1500,1400}")
source "$(dirname "$0")/lib.sh"
bench_init mtu mbmtu 20
bench_build
N=$(echo "$UNDERLAYS" | tr ',' '\n' | grep -c .)
bench_run $((60 + 150 * N)) mtu -prefix "$PREFIX" -meshd "$W/meshd" -underlays "$UNDERLAYS"
