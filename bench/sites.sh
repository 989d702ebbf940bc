#!/usr/bin/env bash
# sites.sh: the namespace benchmarks of several sites (issue 13).
#   throughput: iperf3 pod to pod through two gateways (host -> gateway a ->
#     gateway b -> host, three tunnels) against the direct path of one site
#     (one tunnel), side by side in one run, with the gateways' CPU per
#     Gbit/s; and the same two paths with standalone wireguard-go (go.mod's
#     version) configured by hand, to tell WireGuard's share from meshd's.
#   converge: 3 sites x 10 hosts, 2 gateways each: a new host in site b
#     reachable from all of site a; SIGKILL of the gateway serving a-b until
#     a<->b flows again (100 ms echo streams), and its restart.
# Prints the tables; exits non-zero if a measurement failed.
#
#   sudo bench/sites.sh [-t SECONDS] [-r ROUNDS] [-c REPS] [-m MODES] [-j DIR] [-l LOGDIR] [throughput|converge|all]
#
#   -t  seconds per iperf3 run (default 10)        -r  throughput rounds (default 5)
#   -c  convergence repetitions (default 3)        -m  throughput modes (default direct,gateways,wggo-direct,wggo-chain)
#   -j  write throughput.json and converge.json there
#   -l  keep every meshd log there
set -euo pipefail

T=10 R=5 C=3 MODES=direct,gateways,wggo-direct,wggo-chain JSON= LOGS=
while getopts t:r:c:m:j:l:h o; do
  case $o in
    t) T=$OPTARG ;; r) R=$OPTARG ;; c) C=$OPTARG ;; m) MODES=$OPTARG ;; j) JSON=$OPTARG ;; l) LOGS=$OPTARG ;;
    *) sed -n '2,19p' "$0"; exit 2 ;;
  esac
done
shift $((OPTIND-1))
WHAT=${1:-all}
case $WHAT in throughput|converge|all) ;; *) sed -n '2,19p' "$0"; exit 2 ;; esac
[ "$(id -u)" = 0 ] || { echo "sites.sh: needs root (network namespaces)" >&2; exit 2; }
for tool in ip iperf3 ss go; do
  command -v $tool >/dev/null || { echo "sites.sh: $tool not found (apt-get install --no-install-recommends iperf3 iproute2)" >&2; exit 2; }
done

# The labs' fixed prefixes (sitebench's main.go): a run killed with
# SIGKILL is cleaned up by the next one, and by the trap below otherwise.
PREFIXES=(mbst mbsw mbscv)
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
W=$(mktemp -d /tmp/meshd-sites.XXXXXX)
RUN_PID=

cleanup() {
  local rc=$?
  if [ -n "$RUN_PID" ] && kill -0 "$RUN_PID" 2>/dev/null; then
    # sitebench removes its labs on SIGINT; give it 40 s (30 meshd to stop).
    kill -INT "$RUN_PID" 2>/dev/null || true
    for _ in $(seq 1 80); do kill -0 "$RUN_PID" 2>/dev/null || break; sleep 0.5; done
    kill -KILL "$RUN_PID" 2>/dev/null || true
  fi
  [ -x "$W/sitebench" ] && "$W/sitebench" cleanup "${PREFIXES[@]}" || true
  rm -rf "$W"
  exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# run BOUND ARGS... runs sitebench for at most BOUND seconds, as RUN_PID so
# that Ctrl-C reaches it through cleanup.
run() {
  local bound=$1 rc
  shift
  set +e
  timeout -k 30 "$bound" "$W/sitebench" "$@" &
  RUN_PID=$!
  wait "$RUN_PID"
  rc=$?
  set -e
  RUN_PID=
  [ $rc = 124 ] && echo "sites.sh: gave up after ${bound}s" >&2
  return $rc
}

echo "building meshd, sitebench and wireguard-go (go.mod's version) in $W" >&2
(cd "$ROOT" && go build -o "$W/meshd" ./cmd/meshd && go build -o "$W/sitebench" ./bench/cmd/sitebench \
  && go build -o "$W/wireguard-go" golang.zx2c4.com/wireguard)
echo "meshd $("$W/meshd" --version 2>/dev/null || echo '?') from $(cd "$ROOT" && git describe --always --dirty 2>/dev/null || echo '?'), $(go version | cut -d' ' -f3), $(iperf3 --version | head -1 | cut -d' ' -f1-2)" >&2
"$W/sitebench" cleanup "${PREFIXES[@]}"

ARGS=()
[ -n "$LOGS" ] && ARGS+=(-keep-logs "$LOGS")
rc=0
if [ "$WHAT" != converge ]; then
  JSON_ARGS=()
  [ -n "$JSON" ] && mkdir -p "$JSON" && JSON_ARGS=(-json "$JSON/throughput.json")
  NMODES=$(echo "$MODES" | tr ',' '\n' | grep -c .)
  # Each run: a quiet moment (<= 60 s), T + ~5 s, up to 3 tries; plus labs.
  run $((300 + R * NMODES * 2 * (T + 90))) throughput -t "$T" -r "$R" -modes "$MODES" \
    -meshd "$W/meshd" -wireguard-go "$W/wireguard-go" "${ARGS[@]}" "${JSON_ARGS[@]}" || rc=$?
fi
if [ "$WHAT" != throughput ]; then
  JSON_ARGS=()
  [ -n "$JSON" ] && mkdir -p "$JSON" && JSON_ARGS=(-json "$JSON/converge.json")
  # Start <= 360 s; per repetition a join <= 90 s and a failover <= 700 s
  # (waiting up to 6 min for gateways drained by the previous one, then the
  # kill and the restart).
  run $((600 + C * 800)) converge -r "$C" -meshd "$W/meshd" "${ARGS[@]}" "${JSON_ARGS[@]}" || rc=$?
fi
exit $rc
