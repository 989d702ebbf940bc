# lib.sh: what every bench script shares. Source it after argument
# parsing: bench_init NAME PREFIX STOP_SECONDS ["SOCKET_GLOB ..."]
# (stale sockets to remove, space-separated).
# BENCH_MORE_PREFIXES, if set, names further labs the script's meshbench
# makes (cleaned up alike).
# It sets ROOT (the repo) and W (a work directory), and traps EXIT so
# that, however the script ends, a running meshbench (BENCH_PID) gets
# SIGINT and STOP_SECONDS to clean up, then SIGKILL, and what it left
# (namespaces, processes in them, sockets, W) is removed.

bench_init() {
  BENCH_NAME=$1 PREFIX=$2 BENCH_STOP=$3 BENCH_SOCKETS=${4:-}
  ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
  W=$(mktemp -d "/tmp/meshd-$BENCH_NAME.XXXXXX")
  BENCH_PID=
  trap bench_cleanup EXIT
  trap 'exit 130' INT TERM
}

bench_cleanup() {
  local rc=$?
  if [ -n "$BENCH_PID" ] && kill -0 "$BENCH_PID" 2>/dev/null; then
    kill -INT "$BENCH_PID" 2>/dev/null || true
    for _ in $(seq 1 $((BENCH_STOP * 2))); do kill -0 "$BENCH_PID" 2>/dev/null || break; sleep 0.5; done
    kill -KILL "$BENCH_PID" 2>/dev/null || true
  fi
  # Whatever a killed meshbench left: namespaces, processes in them, sockets.
  [ -x "$W/meshbench" ] && "$W/meshbench" cleanup "$PREFIX" ${BENCH_MORE_PREFIXES:-} || true
  [ -n "$BENCH_SOCKETS" ] && rm -f $BENCH_SOCKETS
  rm -rf "$W"
  exit $rc
}

# bench_build builds meshd and meshbench into W.
bench_build() {
  (cd "$ROOT" && go build -o "$W/meshd" ./cmd/meshd && go build -o "$W/meshbench" ./bench/cmd/meshbench)
}

# bench_run BOUND ARGS... runs "$W/meshbench ARGS..." for at most BOUND
# seconds, as BENCH_PID so that Ctrl-C reaches it through bench_cleanup,
# and exits with its status.
bench_run() {
  local bound=$1 rc
  shift
  set +e
  timeout -k 30 "$bound" "$W/meshbench" "$@" &
  BENCH_PID=$!
  wait "$BENCH_PID"
  rc=$?
  set -e
  BENCH_PID=
  [ $rc = 124 ] && echo "$BENCH_NAME.sh: gave up after ${bound}s" >&2
  exit $rc
}
