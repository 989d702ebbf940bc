#!/usr/bin/env bash
# throughput.sh: TCP (1 and 4 streams) and UDP throughput between two
# namespace hosts, side by side in one run: raw veth underlay, standalone
# wireguard-go (the version in go.mod), meshd (userspace), meshd with 100
# [[allow]] rules, and Nebula if it builds; plus the ChaCha20-Poly1305
# ceiling of this machine. Prints one table; exits non-zero if a run failed.
#
#   sudo bench/throughput.sh [-t SECONDS] [-r ROUNDS] [-m MODES] [-T TESTS] [-p pod|host] [-j OUT.json]
#
#   -t  seconds per iperf3 run (default 10)      -r  rounds (default 3)
#   -m  comma list of raw,wggo,meshd,meshd100,nebula (default: all)
#   -T  comma list of tcp1,tcp4,udp (default: all)
#   -p  pod: pod netns to pod netns through both hosts (default); host: host to host
#   -j  also write the results as JSON
# Environment: NEBULA_VERSION (default latest) is the one version tried.
set -euo pipefail

T=10 R=3 MODES=raw,wggo,meshd,meshd100,nebula P=pod JSON= TESTS=tcp1,tcp4,udp
while getopts t:r:m:p:j:T:h o; do
  case $o in
    t) T=$OPTARG ;; r) R=$OPTARG ;; m) MODES=$OPTARG ;; p) P=$OPTARG ;; j) JSON=$OPTARG ;; T) TESTS=$OPTARG ;;
    *) sed -n '2,16p' "$0"; exit 2 ;;
  esac
done
[ "$(id -u)" = 0 ] || { echo "throughput.sh: needs root (network namespaces)" >&2; exit 2; }
for tool in ip iperf3 ss ping go; do
  command -v $tool >/dev/null || { echo "throughput.sh: $tool not found (apt-get install --no-install-recommends iperf3 iproute2 iputils-ping)" >&2; exit 2; }
done

source "$(dirname "$0")/lib.sh"
bench_init throughput mbtp 20 "/var/run/wireguard/mbtpw[12].sock"

echo "building meshd, meshbench and wireguard-go (go.mod's version) in $W" >&2
(cd "$ROOT" && go build -o "$W/meshd" ./cmd/meshd && go build -o "$W/meshbench" ./bench/cmd/meshbench \
  && go build -o "$W/wireguard-go" golang.zx2c4.com/wireguard)

NEB_ARGS=()
if [[ ",$MODES," == *",nebula,"* ]]; then
  # One attempt, bounded: a temporary module, the module proxy, no toolchain download.
  NV=${NEBULA_VERSION:-latest}
  mkdir -p "$W/nebula-mod"
  if out=$(cd "$W/nebula-mod" && export GOTOOLCHAIN=local GOFLAGS=-mod=mod && go mod init nebulabench >/dev/null 2>&1 \
        && timeout 300 go get "github.com/slackhq/nebula/cmd/nebula@$NV" 2>&1 \
        && timeout 300 go build -o "$W/nebula" github.com/slackhq/nebula/cmd/nebula 2>&1 \
        && timeout 300 go build -o "$W/nebula-cert" github.com/slackhq/nebula/cmd/nebula-cert 2>&1); then
    NEB_ARGS=(-nebula "$W/nebula" -nebula-cert "$W/nebula-cert")
  else
    why=$(printf '%s\n' "$out" | grep -v '^go: downloading' | grep -m1 . | cut -c1-160)
    echo "nebula: unavailable (${why:-build failed})" >&2
    NEB_ARGS=(-nebula-unavailable "go build of nebula@$NV failed: ${why:-unknown}")
  fi
fi

# Each mode and round: setup <= ~45 s, 3 tests of T+~35 s each run up to 3 times
# (reruns when other processes load the machine), teardown <= 20 s; plus crypto and lab.
NMODES=$(echo "$MODES" | tr ',' '\n' | grep -c .)
BOUND=$(( 120 + R * NMODES * (65 + 9 * (T + 35)) ))
JSON_ARGS=()
[ -n "$JSON" ] && JSON_ARGS=(-json "$JSON")
set +e
timeout -k 30 "$BOUND" "$W/meshbench" throughput -prefix "$PREFIX" -t "$T" -r "$R" -modes "$MODES" -tests "$TESTS" -path "$P" \
  -meshd "$W/meshd" -wireguard-go "$W/wireguard-go" "${NEB_ARGS[@]}" "${JSON_ARGS[@]}" &
BENCH_PID=$!
wait "$BENCH_PID"
rc=$?
set -e
BENCH_PID=
[ $rc = 124 ] && echo "throughput.sh: gave up after ${BOUND}s" >&2
exit $rc
