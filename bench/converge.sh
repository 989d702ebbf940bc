#!/usr/bin/env bash
# converge.sh: for each size N, N namespace hosts running meshd (plus one
# newcomer): seconds from start until every host has every peer and the
# sampled pod pairs answer (all pairs for N <= 10, otherwise every host
# pings 3 fixed others), until every host has a newly started host as a
# peer with a route and its pod answers, until a host that leaves with
# SIGTERM and one killed with SIGKILL are gone everywhere; and the idle
# RSS and CPU% of meshd per host. Exits non-zero if a phase never finished.
#
#   sudo bench/converge.sh [-j OUT.json] [-l LOGDIR] [N...]     (default: 5 10 25 50)
set -euo pipefail
JSON= LOGS=
while getopts j:l:h o; do
  case $o in j) JSON=$OPTARG ;; l) LOGS=$OPTARG ;; *) sed -n '2,11p' "$0"; exit 2 ;; esac
done
shift $((OPTIND-1))
if [ $# -eq 0 ]; then SIZES=(5 10 25 50); else SIZES=("$@"); fi
[ "$(id -u)" = 0 ] || { echo "converge.sh: needs root (network namespaces)" >&2; exit 2; }
for tool in ip ping go; do
  command -v $tool >/dev/null || { echo "converge.sh: $tool not found" >&2; exit 2; }
done
source "$(dirname "$0")/lib.sh"
bench_init converge mbcv 40
bench_build
# Per size: lab build ~0.5 s/host, phases bounded at 120+60+60+90 s, idle 10 s.
BOUND=60
for n in "${SIZES[@]}"; do BOUND=$((BOUND + 360 + n)); done
ARGS=()
[ -n "$JSON" ] && ARGS+=(-json "$JSON")
[ -n "$LOGS" ] && ARGS+=(-keep-logs "$LOGS")
bench_run "$BOUND" converge -prefix "$PREFIX" -meshd "$W/meshd" "${ARGS[@]}" "${SIZES[@]}"
