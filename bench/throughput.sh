#!/usr/bin/env bash
# throughput.sh: TCP (1 and 4 streams) and UDP throughput between two
# namespace hosts, side by side in one run: raw veth underlay, standalone
# wireguard-go (the version in go.mod), meshd (userspace), meshd with 100
# [[allow]] rules, and Nebula if it builds; plus the ChaCha20-Poly1305
# ceiling of this machine. Prints one table; exits non-zero if a run failed.
#
#   sudo bench/throughput.sh [-t SECONDS] [-r ROUNDS] [-m MODES] [-T TESTS] [-p pod|host] [-j OUT.json] [-P DIR] [-B REV] [-c]
#
#   -t  seconds per iperf3 run (default 10)      -r  rounds (default 3)
#   -m  comma list of raw,wggo,wggonft,wggoct,wggonoct,wggorules,wggofull,meshd,meshdnotrack,meshd100,meshdbase,nebula
#       (default: raw,wggo,wggonft,meshd,meshd100,nebula)
#   -T  comma list of tcp1,tcp4,udp (default: all)
#   -p  pod: pod netns to pod netns through both hosts (default); host: host to host
#   -j  also write the results as JSON
#   -P  record a system-wide perf profile of every measurement into DIR
#   -B  build meshd at git revision REV too, for mode meshdbase (before/after)
#   -c  pin: h1's tunnel and the iperf3 client on CPU 0, h2's and the server on CPU 1
# Environment: NEBULA_VERSIONS (default "latest v1.11.2 v1.10.3"): tried in order,
# the first that builds is measured; NEBULA_GOTOOLCHAIN (default go1.27.3) for
# versions that need a newer Go.
set -euo pipefail

T=10 R=3 MODES=raw,wggo,wggonft,meshd,meshd100,nebula P=pod JSON= TESTS=tcp1,tcp4,udp PERF= BASE= PIN=
while getopts t:r:m:p:j:T:P:B:ch o; do
  case $o in
    t) T=$OPTARG ;; r) R=$OPTARG ;; m) MODES=$OPTARG ;; p) P=$OPTARG ;; j) JSON=$OPTARG ;; T) TESTS=$OPTARG ;; P) PERF=$OPTARG ;; B) BASE=$OPTARG ;; c) PIN=1 ;;
    *) sed -n '2,21p' "$0"; exit 2 ;;
  esac
done
[ "$(id -u)" = 0 ] || { echo "throughput.sh: needs root (network namespaces)" >&2; exit 2; }
for tool in ip iperf3 ss ping go; do
  command -v $tool >/dev/null || { echo "throughput.sh: $tool not found (apt-get install --no-install-recommends iperf3 iproute2 iputils-ping)" >&2; exit 2; }
done

source "$(dirname "$0")/lib.sh"
# mbtpm: the own lab of the modes with ip rules (see meshbench's addsIPRules).
BENCH_MORE_PREFIXES=mbtpm
bench_init throughput mbtp 20 "/var/run/wireguard/mbtpw[12].sock /var/run/wireguard/mbtpmw[12].sock"

echo "building meshd, meshbench and wireguard-go (go.mod's version) in $W" >&2
(cd "$ROOT" && go build -o "$W/meshd" ./cmd/meshd && go build -o "$W/meshbench" ./bench/cmd/meshbench \
  && go build -o "$W/wireguard-go" golang.zx2c4.com/wireguard)

BASE_ARGS=()
if [ -n "$BASE" ]; then
  # An export of the revision's tree, not a worktree: the repository's own
  # metadata stays untouched.
  rev=$(cd "$ROOT" && git rev-parse --short "$BASE")
  mkdir -p "$W/base" && (cd "$ROOT" && git archive "$rev") | tar -x -C "$W/base"
  (cd "$W/base" && go build -o "$W/meshd-base" ./cmd/meshd)
  BASE_ARGS=(-meshd-base "$W/meshd-base" -meshd-base-name "meshd at $BASE ($rev)")
fi

NEB_ARGS=()
if [[ ",$MODES," == *",nebula,"* ]]; then
  # Newest first; a version whose build fails (a dependency the module proxy
  # no longer serves, say) falls back to the next. A version that needs a
  # newer Go than this machine's is retried with GOTOOLCHAIN=$NEBULA_GOTOOLCHAIN,
  # which the go command fetches from the module proxy.
  NEBULA_VERSIONS=${NEBULA_VERSIONS:-${NEBULA_VERSION:-latest v1.11.2 v1.10.3}}
  NEBULA_GOTOOLCHAIN=${NEBULA_GOTOOLCHAIN:-go1.27.3}
  build_nebula() { # VERSION TOOLCHAIN
    rm -rf "$W/nebula-mod" && mkdir -p "$W/nebula-mod"
    (cd "$W/nebula-mod" && export GOTOOLCHAIN=$2 GOFLAGS=-mod=mod && go mod init nebulabench >/dev/null 2>&1 \
      && timeout 300 go get "github.com/slackhq/nebula/cmd/nebula@$1" 2>&1 \
      && timeout 300 go build -o "$W/nebula" github.com/slackhq/nebula/cmd/nebula 2>&1 \
      && timeout 300 go build -o "$W/nebula-cert" github.com/slackhq/nebula/cmd/nebula-cert 2>&1 \
      && go list -m -f '{{.Version}}' github.com/slackhq/nebula > "$W/nebula-version")
  }
  first_error() { # the telling line of a failed build, not the import chain above it
    local l; l=$(printf '%s\n' "$1" | grep -m1 -i -e 'requires go' -e '403' -e 'not available' -e 'cannot find' -e 'undefined')
    [ -n "$l" ] || l=$(printf '%s\n' "$1" | grep -v -e '^go: downloading' -e '^go: added' -e '^go: finding' | grep -m1 .)
    printf '%s' "$l" | sed 's/^[[:space:]]*//' | cut -c1-200
  }
  skipped=()
  for nv in $NEBULA_VERSIONS; do
    if out=$(build_nebula "$nv" local) \
      || { [[ $out == *"requires go >="* ]] && out=$(build_nebula "$nv" "$NEBULA_GOTOOLCHAIN"); }; then
      NEB_ARGS=(-nebula "$W/nebula" -nebula-cert "$W/nebula-cert" -nebula-version "$(cat "$W/nebula-version")")
      break
    fi
    skipped+=("nebula@$nv: $(first_error "$out")")
    echo "nebula@$nv: build failed: $(first_error "$out")" >&2
  done
  if [ ${#NEB_ARGS[@]} = 0 ]; then
    NEB_ARGS=(-nebula-unavailable "no nebula version in '$NEBULA_VERSIONS' built: ${skipped[*]}")
  elif [ ${#skipped[@]} -gt 0 ]; then
    NEB_ARGS+=(-nebula-skipped "$(IFS='; '; echo "${skipped[*]}")")
  fi
fi

# Each mode and round: setup <= ~45 s, 3 tests of T+~35 s each run up to 3 times
# (reruns when other processes load the machine), teardown <= 20 s; plus crypto and lab.
NMODES=$(echo "$MODES" | tr ',' '\n' | grep -c .)
BOUND=$(( 120 + R * NMODES * (65 + 9 * (T + 35)) ))
JSON_ARGS=()
[ -n "$JSON" ] && JSON_ARGS=(-json "$JSON")
[ -n "$PERF" ] && JSON_ARGS+=(-perf "$PERF")
[ -n "$PIN" ] && JSON_ARGS+=(-pin)
bench_run "$BOUND" throughput -prefix "$PREFIX" -t "$T" -r "$R" -modes "$MODES" -tests "$TESTS" -path "$P" \
  -meshd "$W/meshd" -wireguard-go "$W/wireguard-go" "${BASE_ARGS[@]}" "${NEB_ARGS[@]}" "${JSON_ARGS[@]}"
