#!/usr/bin/env bash
# Profiles the upstream library's create in isolation: loads
# src/upstream/sessions.lua (as the sidecar does, under a name of its own)
# into a fresh redis-server and calls its `create` operation directly with
# the load generator, PROFILE_BATCH creations per FCALL as the sidecar's
# group commit sends them, each with a user, a conn and one attribute as in
# bench.sh's write-through section. Prints the redis-server's CPU per
# creation and its INFO commandstats: what each command inside costs, and,
# from the FCALL line, what the script machinery around them costs.
#
# A benchmark script, not a test: pin it the way bench.sh does (redis-server
# on CPU 1, the load generator on CPU 0) and compare versions of the library
# by running it on each, alternately, several times.
#
# Environment:
#   PROFILE_LIBRARY   the library to load (src/upstream/sessions.lua)
#   PROFILE_BATCH     creations per FCALL (19: what the group commit sends at -P 16)
#   PROFILE_CREATIONS creations in all (300000)
#   PROFILE_USERS     distinct users per batch position (10000)
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

readonly LIBRARY=${PROFILE_LIBRARY:-src/upstream/sessions.lua}
readonly BATCH=${PROFILE_BATCH:-19}
readonly CREATIONS=${PROFILE_CREATIONS:-300000}
readonly USERS=${PROFILE_USERS:-10000}

die() { printf 'error: %s\n' "$*" >&2; exit 1; }

command -v redis-server >/dev/null || bash scripts/ensure-redis.sh
cargo build --release --quiet --features loadgen --bin loadgen
readonly LOADGEN=${CARGO_TARGET_DIR:-target}/release/loadgen

on_cpu() {
  local cpu=$1
  shift
  if (($(nproc) >= 2)) && command -v taskset >/dev/null; then
    taskset -c "$cpu" "$@"
  else
    "$@"
  fi
}

port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
work=$(mktemp -d)
on_cpu 1 redis-server --port "$port" --bind 127.0.0.1 --save '' --appendonly no --dir "$work" \
  >"$work/redis.log" 2>&1 &
trap 'redis-cli -p "$port" SHUTDOWN NOSAVE >/dev/null 2>&1 || true; rm -rf "$work"' EXIT
for _ in $(seq 100); do
  redis-cli -p "$port" PING >/dev/null 2>&1 && break
  sleep 0.05
done
redis_pid=$(redis-cli -p "$port" INFO server | tr -d '\r' | awk -F: '$1 == "process_id" { print $2 }')
[[ -n $redis_pid ]] || die "redis-server did not start: $(cat "$work/redis.log")"
{ echo "#!lua name=profile"; sed 's/SESSION_SIDECAR_FUNCTION/profile/' "$LIBRARY"; } |
  redis-cli -p "$port" -x FUNCTION LOAD >/dev/null || die "FUNCTION LOAD of $LIBRARY failed"

# One FCALL of BATCH creations (see create_session in sessions.lua for the
# arguments). {n} numbers the request: ids, conns, creation times and
# expiries are unique and grow with it (the 7 digits of --first 1000000
# on), users repeat over USERS per batch position.
now=$(date +%s%3N)
created="179629{n}"
expires="1896{n}00"
deadline="1897{n}00"
command="FCALL profile 3 session:x:{t} session:e:{t} session:i:{t} create session $now node 100000 300000 {t} $BATCH"
for ((j = 1; j <= BATCH; j++)); do
  event="{\"event\":\"created\",\"id\":\"{n}-$j\",\"user\":\"u{r}-$j\",\"conn\":\"c{n}-$j\",\"node\":\"node\",\"at\":$now}"
  command+=" $created 735{n}0$j {n}-$j u{r}-$j c{n}-$j 1 1 3600000 0 1024 1 $expires $deadline 1 1 $((now + 3000)) $event 1 locale en-US"
done
requests=$((CREATIONS / BATCH))
before=$(awk '{ print $14 + $15 }' "/proc/$redis_pid/stat")
output=$(on_cpu 0 "$LOADGEN" --port "$port" --clients 8 --pipeline 4 --requests "$requests" \
  --keyspace "$USERS" --first 1000000 --command "$command")
after=$(awk '{ print $14 + $15 }' "/proc/$redis_pid/stat")
[[ $output =~ errors=0 ]] || die "the calls got errors: $output"
awk -v t="$((after - before))" -v hz="$(getconf CLK_TCK)" -v n="$((requests * BATCH))" -v b="$BATCH" \
  'BEGIN { printf "redis-server CPU per creation: %.2f us (%d creations, %d per FCALL)\n", t / hz * 1e6 / n, n, b }'
redis-cli -p "$port" INFO commandstats | tr -d '\r' | grep '^cmdstat_' | grep -v 'function|load' |
  sort -t= -k3 -rn
