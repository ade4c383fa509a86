#!/usr/bin/env bash
# Measures the sidecar against a redis-server on the same machine, in one run,
# and reports the ratios that the design brief's performance goals are stated
# in (the machines are small and noisy, so absolute numbers mean little), in
# one summary table at the end.
#
# How it measures, so that a ratio is the sidecar's own cost:
# - With two CPUs or more, every server under test runs alone on CPU 1 and the
#   load generator (redis-benchmark, or scripts/loadgen.rs where a request is
#   several commands or the load is fixed) on CPU 0. A proxy and its upstream
#   share CPU 1 when compared with a direct redis-server there; a write-through
#   sidecar runs on CPU 0 beside the load generator, as in the application's
#   pod, so the shared upstream's cost is what is compared. Without two CPUs
#   it says so and runs unpinned.
# - Each process's CPU time per request is read from /proc/<pid>/stat.
# - Each comparison runs BENCH_ROUNDS times, alternating between the servers,
#   and the medians are compared.
#
# Needs cargo, redis-server, redis-cli and redis-benchmark (installed by
# scripts/ensure-redis.sh when missing), and nutcracker (twemproxy, installed
# on demand). Every server it starts listens on 127.0.0.1 on a free port and
# is stopped when the script exits.
#
# Environment:
#   BENCH_CLIENTS             concurrent clients (50)
#   BENCH_REQUESTS            requests per unpipelined run (150000)
#   BENCH_PIPELINED_REQUESTS  requests per 16-deep pipelined run (1000000)
#   BENCH_ROUNDS              alternating rounds per comparison, medians kept (5)
#   BENCH_MAX_STEAL           percent of a pinned CPU's time the hypervisor may
#                             steal during a run before the run is repeated (25)
#   BENCH_STEAL_RERUNS        times one run is repeated for steal at most (3)
#   BENCH_WRITE_REQUESTS      creates per unpipelined write run (50000)
#   BENCH_PIPELINED_WRITE_REQUESTS  the same with -P 16 (100000)
#   BENCH_MIGRATE_SESSIONS    sessions moved between two sidecars (100000)
#   BENCH_SIDECAR_BIN         benchmark this binary instead of building one
#   BENCH_SIDECAR_ARGS        extra flags for the sidecar, e.g. "--threads 1"
#   BENCH_PASSTHROUGH_ARGS    extra flags for the passthrough sidecar
#   BENCH_IDLE_CONNECTIONS    idle connections opened to each server (5000)
#   BENCH_RECONNECT_CLIENTS   WebSocket clients of the reconnect section (10000)
#   BENCH_RECONNECT_ROUNDS    its rounds of each variant, medians kept (3)
#   BENCH_SECTIONS            sections to run, of: memory reads passthrough
#                             write_through latency cluster migration
#                             idle_connections reconnect (default: all, in
#                             order; migration and reconnect start only their
#                             own servers)
#   BENCH_KEEP_LOGS=1         keep the servers' logs instead of deleting them
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

readonly CLIENTS=${BENCH_CLIENTS:-50}
readonly REQUESTS=${BENCH_REQUESTS:-150000}
readonly PIPELINED_REQUESTS=${BENCH_PIPELINED_REQUESTS:-1000000}
readonly PIPELINE_DEPTH=16
# Each comparison is measured this many times, alternating between the
# servers, and the medians are compared: one noisy run cannot decide it.
readonly ROUNDS=${BENCH_ROUNDS:-5}
# On a virtual machine the hypervisor runs other guests on our CPUs (steal
# time, /proc/stat): a run during a burst of it measures the neighbours, not
# the servers. Such a run is repeated, a few times at most, and every run's
# steal is reported.
readonly MAX_STEAL=${BENCH_MAX_STEAL:-25}
readonly STEAL_RERUNS=${BENCH_STEAL_RERUNS:-3}
# Write-through CREATEs add a session each: fewer of them.
readonly WRITE_REQUESTS=${BENCH_WRITE_REQUESTS:-50000}
readonly PIPELINED_WRITE_REQUESTS=${BENCH_PIPELINED_WRITE_REQUESTS:-100000}
readonly MIGRATE_SESSIONS=${BENCH_MIGRATE_SESSIONS:-100000}
# redis-benchmark -r 10000 replaces __rand_int__ with a number in 0..9999
# printed as %012d: the prefilled ids are exactly those.
readonly SESSIONS=10000
# Long enough that no SESSION.TOUCH during the run extends the expiry.
readonly SESSION_TTL_SECONDS=3600
readonly START_TIMEOUT_SECONDS=30
readonly STOP_TIMEOUT_SECONDS=10

WORK_DIR=$(mktemp -d "${TMPDIR:-/tmp}/session-sidecar-bench.XXXXXX")
readonly WORK_DIR
SIDECAR_BIN=${BENCH_SIDECAR_BIN:-}
LOADGEN_BIN=
# Pinning (setup_pinning): the CPUs of the servers under test and of the
# load generator, empty when not pinning.
PINNED=0
SERVER_CPU=
CLIENT_CPU=
# Set by measure_loadgen: latency percentiles in microseconds.
P50= P99= P999=
REDIS_PORT=
SIDECAR_PORT=
REDIS_PID=
SIDECAR_PID=
# The write-through sidecar, on the same redis-server.
WRITE_THROUGH_PORT=
WRITE_THROUGH_PID=
# The sidecar's resident memory before the prefill, in KiB.
SIDECAR_RSS_EMPTY_KB=
# Set by measure: requests per second, and the server's CPU time per request.
RPS=
CPU_US=
# Length of one session as SESSION.GET ... JSON returns it.
SESSION_PAYLOAD_BYTES=
# Servers started by this script, stopped by cleanup.
PIDS=()
LAST_PID=
# Ports handed out so far, so two servers never get the same one.
CLAIMED_PORTS=()

log() { printf '==> %s\n' "$*" >&2; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

# --- lifecycle --------------------------------------------------------------

cleanup() {
  local status=$? pid deadline
  for pid in "${PIDS[@]}"; do
    kill -TERM "$pid" 2>/dev/null || true
  done
  deadline=$((SECONDS + STOP_TIMEOUT_SECONDS))
  for pid in "${PIDS[@]}"; do
    while kill -0 "$pid" 2>/dev/null && ((SECONDS < deadline)); do
      sleep 0.1
    done
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
  done

  if ((status != 0)); then
    local log_file
    for log_file in "$WORK_DIR"/*.log; do
      [[ -e $log_file ]] || continue
      printf '\n--- last lines of %s ---\n' "$log_file" >&2
      tail -n 20 "$log_file" >&2 || true
    done
  fi
  if [[ ${BENCH_KEEP_LOGS:-} == 1 ]]; then
    log "logs kept in $WORK_DIR"
  else
    rm -rf "$WORK_DIR"
  fi
  exit "$status"
}

require_positive_integer() {
  local name=$1 value=$2
  [[ $value =~ ^[1-9][0-9]*$ ]] || die "$name must be a positive integer, got '$value'"
}

check_setup() {
  require_positive_integer BENCH_CLIENTS "$CLIENTS"
  require_positive_integer BENCH_REQUESTS "$REQUESTS"
  require_positive_integer BENCH_PIPELINED_REQUESTS "$PIPELINED_REQUESTS"
  require_positive_integer BENCH_ROUNDS "$ROUNDS"
  bash scripts/ensure-redis.sh
  local command
  for command in awk timeout; do
    command -v "$command" >/dev/null 2>&1 || die "$command is required"
  done
  # The sidecar reads its configuration from SESSION_SIDECAR_* too: make sure
  # the caller's environment cannot change what is measured.
  local variable
  while read -r variable; do
    unset "$variable"
  done < <(compgen -e | grep '^SESSION_SIDECAR_' || true)
}

build_sidecar() {
  log "cargo build --release (the sidecar and the benchmark's load generator)"
  LOADGEN_BIN=${CARGO_TARGET_DIR:-target}/release/loadgen
  if [[ -n $SIDECAR_BIN ]]; then
    [[ -x $SIDECAR_BIN ]] || die "BENCH_SIDECAR_BIN=$SIDECAR_BIN is not an executable"
    cargo build --release --features loadgen --bin loadgen
  else
    cargo build --release --features loadgen --bin session-sidecar --bin loadgen
    SIDECAR_BIN=${CARGO_TARGET_DIR:-target}/release/session-sidecar
  fi
  [[ -x $SIDECAR_BIN ]] || die "no binary at $SIDECAR_BIN after the build"
  [[ -x $LOADGEN_BIN ]] || die "no load generator at $LOADGEN_BIN after the build"
}

# --- ports and processes ----------------------------------------------------

# Prints a TCP port on 127.0.0.1 that nothing listens on right now.
unused_port() {
  if command -v python3 >/dev/null 2>&1; then
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
    return
  fi
  # Without python3: a random port whose connection attempt is refused.
  local port attempt
  for ((attempt = 0; attempt < 1000; attempt++)); do
    port=$((20000 + RANDOM % 30000))
    if ! (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
      echo "$port"
      return
    fi
  done
  return 1
}

# claim_port VAR: sets VAR to a free port that no other server here got.
claim_port() {
  local var=$1 candidate claimed attempt
  for ((attempt = 0; attempt < 100; attempt++)); do
    candidate=$(unused_port) || die "found no free port"
    for claimed in "${CLAIMED_PORTS[@]}"; do
      [[ $claimed == "$candidate" ]] && continue 2
    done
    CLAIMED_PORTS+=("$candidate")
    printf -v "$var" '%s' "$candidate"
    return
  done
  die "found no free port"
}

# start_process NAME COMMAND...: runs COMMAND in the background, its output in
# $WORK_DIR/NAME.log, and sets LAST_PID; on CPU START_ON_CPU when pinning.
start_process() {
  local name=$1
  shift
  # taskset execs the command: $! is the server's own pid either way.
  if ((PINNED)) && [[ -n ${START_ON_CPU:-} ]]; then
    taskset -c "$START_ON_CPU" "$@" >"$WORK_DIR/$name.log" 2>&1 &
  else
    "$@" >"$WORK_DIR/$name.log" 2>&1 &
  fi
  LAST_PID=$!
  PIDS+=("$LAST_PID")
}

# cli PORT ARGS...: one command to the server on PORT, never hanging.
cli() {
  local port=$1
  shift
  timeout 10 redis-cli -h 127.0.0.1 -p "$port" "$@"
}

wait_for_ping() {
  local name=$1 pid=$2 port=$3
  local deadline=$((SECONDS + START_TIMEOUT_SECONDS))
  until [[ $(cli "$port" PING 2>/dev/null) == PONG ]]; do
    kill -0 "$pid" 2>/dev/null || die "$name exited during startup"
    ((SECONDS < deadline)) || die "$name did not answer PING on port $port within ${START_TIMEOUT_SECONDS}s"
    sleep 0.1
  done
}

# start_redis_server VAR NAME: starts an empty, non-persistent redis-server
# and sets VAR to its port (LAST_PID to its pid).
start_redis_server() {
  local var=$1 name=$2 port
  claim_port port
  start_process "$name" redis-server --bind 127.0.0.1 --port "$port" \
    --save '' --appendonly no --dir "$WORK_DIR"
  wait_for_ping "$name" "$LAST_PID" "$port"
  printf -v "$var" '%s' "$port"
}

# start_sidecar VAR NAME [FLAG...]: starts the sidecar with NAME as node id
# and the extra flags, and sets VAR to its port (LAST_PID to its pid).
start_sidecar() {
  local var=$1 name=$2 port
  shift 2
  claim_port port
  start_process "$name" "$SIDECAR_BIN" --listen "127.0.0.1:$port" \
    --metrics-listen 127.0.0.1:0 --node-id "$name" "$@"
  wait_for_ping "$name" "$LAST_PID" "$port"
  printf -v "$var" '%s' "$port"
}

# cpu_ticks PID...: user + system CPU time the processes have used, in
# clock ticks.
cpu_ticks() {
  local pid total=0 ticks
  for pid in "$@"; do
    ticks=$(awk '{ print $14 + $15 }' "/proc/$pid/stat")
    total=$((total + ticks))
  done
  echo "$total"
}

# rss_kb PID: resident memory, in KiB.
rss_kb() {
  awk '$1 == "VmRSS:" { print $2 }' "/proc/$1/status"
}

# --- data -------------------------------------------------------------------

# Encodes each input line, a command of space-separated words, as RESP.
resp_encode() {
  LC_ALL=C awk '{
    printf "*%d\r\n", NF
    for (i = 1; i <= NF; i++) printf "$%d\r\n%s\r\n", length($i), $i
  }'
}

# pipe_commands PORT: sends the commands read from stdin with redis-cli --pipe
# and fails unless every one of them succeeded.
pipe_commands() {
  local port=$1 output
  output=$(resp_encode | redis-cli -h 127.0.0.1 -p "$port" --pipe 2>&1) ||
    die "redis-cli --pipe into port $port failed: $output"
  [[ $output =~ errors:\ 0, ]] || die "redis-cli --pipe into port $port reported errors: $output"
}

# session_create_commands [N]: N (default $SESSIONS) SESSION.CREATE commands.
session_create_commands() {
  awk -v n="${1:-$SESSIONS}" -v ttl="$SESSION_TTL_SECONDS" 'BEGIN {
    for (i = 0; i < n; i++)
      printf "SESSION.CREATE ID %012d USER u%d CONN c%d TTL %d ATTR locale en-US ATTR plan free ATTR gateway gw-%d\n", i, i, i, ttl, i % 8
  }'
}

# session_hash_commands [indexes]: the sessions as redis-server hashes with
# the same fields as SESSION.GET replies, and their expiry; with "indexes",
# also the indexes the sidecar keeps for them: each user's set of session
# ids and each connection's session id (as the seed design stores them).
session_hash_commands() {
  local now_ms
  now_ms=$(date +%s%3N)
  awk -v n="$SESSIONS" -v now="$now_ms" -v ttl_ms="$((SESSION_TTL_SECONDS * 1000))" -v indexes="${1:-}" 'BEGIN {
    for (i = 0; i < n; i++) {
      printf "HSET session:%012d id %012d user u%d conn c%d status active node sidecar created %s last_active %s expires %.0f ttl %d version 1 attr:locale en-US attr:plan free attr:gateway gw-%d\n", i, i, i, i, now, now, now + ttl_ms, ttl_ms, i % 8
      printf "PEXPIREAT session:%012d %.0f\n", i, now + ttl_ms
      if (indexes == "indexes") {
        printf "SADD user:u%d %012d\n", i, i
        printf "SET conn:c%d %012d\n", i, i
      }
    }
  }'
}

# string_commands SIZE: a SET of a SIZE-byte value for each session id.
string_commands() {
  awk -v n="$SESSIONS" -v size="$1" 'BEGIN {
    value = ""
    while (length(value) < size) value = value "x"
    for (i = 0; i < n; i++) printf "SET %012d %s\n", i, value
  }'
}

# info_field PORT SECTION FIELD: one field of INFO, empty when absent.
info_field() {
  { cli "$1" INFO "$2" || true; } | tr -d '\r' | awk -F: -v field="$3" '$1 == field { print $2 }'
}

prefill() {
  SIDECAR_RSS_EMPTY_KB=$(rss_kb "$SIDECAR_PID")
  log "prefilling $SESSIONS sessions into the sidecar"
  session_create_commands | pipe_commands "$SIDECAR_PORT"
  local count
  count=$(cli "$SIDECAR_PORT" SESSION.COUNT) || die "SESSION.COUNT failed: $count"
  [[ $count == "$SESSIONS" ]] || die "the sidecar holds '$count' sessions after the prefill, expected $SESSIONS"

  # redis-server GETs a string about as long as the session the sidecar sends.
  local json
  json=$(cli "$SIDECAR_PORT" SESSION.GET 000000000000 JSON) || die "SESSION.GET ... JSON failed: $json"
  [[ $json == '{'* ]] || die "SESSION.GET 000000000000 JSON did not return a JSON object: $json"
  SESSION_PAYLOAD_BYTES=${#json}
  log "prefilling $SESSIONS keys of $SESSION_PAYLOAD_BYTES bytes into redis-server"
  string_commands "$SESSION_PAYLOAD_BYTES" | pipe_commands "$REDIS_PORT"
}

# Makes sure the benchmarked commands answer what they should: redis-benchmark
# would happily measure how fast nil or an error comes back.
check_replies() {
  local id=000000004242 reply
  reply=$(cli "$SIDECAR_PORT" SESSION.GET "$id") || die "SESSION.GET $id failed: $reply"
  [[ $reply == *u4242* ]] || die "SESSION.GET $id did not return the session: $reply"
  reply=$(cli "$SIDECAR_PORT" SESSION.TOUCH "$id") || die "SESSION.TOUCH $id failed: $reply"
  [[ $reply =~ ^[1-9][0-9]*$ ]] || die "SESSION.TOUCH $id replied '$reply'"
  reply=$(cli "$REDIS_PORT" STRLEN "$id") || die "STRLEN $id failed: $reply"
  [[ $reply == "$SESSION_PAYLOAD_BYTES" ]] || die "redis-server GET $id has length '$reply'"
}

# --- measuring --------------------------------------------------------------

# The requests per second of the last CSV row of redis-benchmark --csv.
parse_rps() {
  awk -F'","' '/^"/ {
    rps = $2
    gsub(/"/, "", rps)
    if (rps ~ /^[0-9]+(\.[0-9]+)?$/) last = rps
  }
  END {
    if (last == "") exit 1
    print last
  }'
}

# measure PORT PID PIPELINE COMMAND...: runs COMMAND with __rand_int__ over
# the prefilled ids; sets RPS, and CPU_US to the microseconds of CPU the
# server (PID) spent per request, a figure the benchmark client's own cost
# does not distort. With MEASURE_UPSTREAM_PID set (one or more pids), also
# UPSTREAM_CPU_US: the CPU those processes (a write-through sidecar's
# upstream, every master of a cluster) spent per request.
measure() {
  local port=$1 pid=$2 pipeline=$3 requests=${MEASURE_REQUESTS:-$REQUESTS} output before after
  local upstream_pid=${MEASURE_UPSTREAM_PID:-} upstream_before=0 upstream_after=0
  shift 3
  ((pipeline == 1)) || requests=${MEASURE_PIPELINED_REQUESTS:-$PIPELINED_REQUESTS}
  before=$(cpu_ticks "$pid")
  # shellcheck disable=SC2086 # one or more pids
  [[ -z $upstream_pid ]] || upstream_before=$(cpu_ticks $upstream_pid)
  output=$(on_cpu "$CLIENT_CPU" redis-benchmark -h 127.0.0.1 -p "$port" -c "$CLIENTS" -n "$requests" \
    -r "$SESSIONS" -P "$pipeline" --csv "$@" 2>&1) ||
    die "redis-benchmark $* (port $port, -P $pipeline) failed: $output"
  after=$(cpu_ticks "$pid")
  # shellcheck disable=SC2086 # one or more pids
  [[ -z $upstream_pid ]] || upstream_after=$(cpu_ticks $upstream_pid)
  RPS=$(parse_rps <<<"$output") || die "no requests per second in redis-benchmark's output: $output"
  CPU_US=$(awk -v t="$((after - before))" -v hz="$(getconf CLK_TCK)" -v n="$requests" \
    'BEGIN { printf "%.2f", t / hz * 1e6 / n }')
  UPSTREAM_CPU_US=$(awk -v t="$((upstream_after - upstream_before))" -v hz="$(getconf CLK_TCK)" \
    -v n="$requests" 'BEGIN { printf "%.2f", t / hz * 1e6 / n }')
}

ratio() {
  awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.2f", a / b; else print "n/a" }'
}

# verdict RATIO GOAL at-least|at-most
verdict() {
  awk -v r="$1" -v goal="$2" -v sense="$3" 'BEGIN {
    if (r == "n/a") print "n/a"
    else if ((sense == "at-least" && r + 0 >= goal) || (sense == "at-most" && r + 0 <= goal)) print "ok"
    else print "BELOW GOAL"
  }'
}

heading() {
  printf '\n## %s\n\n' "$1"
}

# The commit the benchmarked binary was built from, as far as we know.
sidecar_version() {
  if [[ -n ${BENCH_SIDECAR_BIN:-} ]]; then
    echo "$SIDECAR_BIN"
  elif git rev-parse --verify --quiet HEAD >/dev/null; then
    local dirty=
    git diff --quiet HEAD -- || dirty=" with uncommitted changes"
    echo "$(git rev-parse --short HEAD)$dirty"
  else
    echo "working tree without commits"
  fi
}

print_environment() {
  heading "Setup"
  printf '%-22s %s\n' \
    "machine" "$(uname -srm), $(nproc) cores" \
    "redis-server" "$(redis-server --version | awk '{ print $3 }' | sed 's/^v=//')" \
    "sidecar" "$(sidecar_version)" \
    "clients" "$CLIENTS" \
    "requests" "$REQUESTS unpipelined, $PIPELINED_REQUESTS with -P $PIPELINE_DEPTH" \
    "sessions" "$SESSIONS, $SESSION_PAYLOAD_BYTES bytes as JSON"
}

# median VALUE...: the middle value (the lower middle for an even count).
median() {
  printf '%s\n' "$@" | sort -g | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }'
}

# --- pinning ----------------------------------------------------------------

# With two CPUs or more, each server under test runs alone on SERVER_CPU and
# the load generator on CLIENT_CPU: the figures are then each process's own
# cost, not the fight for the cores.
setup_pinning() {
  if (($(nproc) >= 2)) && command -v taskset >/dev/null 2>&1; then
    PINNED=1
    SERVER_CPU=1
    CLIENT_CPU=0
  fi
}

# on_cpu CPU COMMAND...: runs COMMAND bound to CPU when pinning (every thread
# it starts inherits the binding, and the sidecar sizes its event loops by
# the CPUs it may use).
on_cpu() {
  local cpu=$1
  shift
  if ((PINNED)) && [[ -n $cpu ]]; then
    taskset -c "$cpu" "$@"
  else
    "$@"
  fi
}

pinning_note() {
  if ((PINNED)); then
    printf 'pinned: servers under test on CPU %s, the load generator on CPU %s\n' "$SERVER_CPU" "$CLIENT_CPU"
  else
    printf 'NOT PINNED (fewer than 2 CPUs, or no taskset): the figures mix the processes fighting for the cores\n'
  fi
}

# --- the summary table ------------------------------------------------------

readonly SUMMARY_FORMAT='%-44s %3s %8s %-8s %-10s %12s %12s  %s\n'
SUMMARY_ROWS=()

# summary_row LABEL PIPELINE RATIO GOAL at-least|at-most|"" OURS_CPU BASE_CPU [NOTE]
summary_row() {
  local goal_text='' checked=''
  if [[ -n $5 ]]; then
    [[ $5 == at-least ]] && goal_text=">= $4" || goal_text="<= $4"
    checked=$(verdict "$3" "$4" "$5")
  fi
  # shellcheck disable=SC2059 # the format is the table's layout
  SUMMARY_ROWS+=("$(printf "$SUMMARY_FORMAT" "$1" "$2" "$3" "$goal_text" "$checked" "$6" "$7" "${8:-}")")
}

print_summary() {
  ((${#SUMMARY_ROWS[@]} > 0)) || return 0
  heading "Summary: every comparison, medians of $ROUNDS alternating rounds"
  pinning_note
  printf '\n'
  # shellcheck disable=SC2059
  printf "$SUMMARY_FORMAT" comparison -P ratio goal verdict "ours_us/req" "base_us/req" note
  printf '%s\n' "${SUMMARY_ROWS[@]}"
  printf '\nratio: throughput of ours over the base, unless the row says otherwise.\n'
  printf 'us/req: CPU microseconds per request of the process(es) named in the row.\n'
  if ((${#STEAL_KEPT[@]} > 0)); then
    # shellcheck disable=SC2086,SC2048 # space-separated numbers
    printf 'steal: the hypervisor took a median %s%% (at most %s%%) of a measured CPU during the kept runs; %d runs were repeated for taking over %s%%.\n' \
      "$(median ${STEAL_KEPT[*]})" "$(printf '%s\n' "${STEAL_KEPT[@]}" | sort -n | tail -1)" "$STEAL_REPEATED" "$MAX_STEAL"
  fi
}

# --- measuring with the load generator --------------------------------------

# measure_loadgen PORT PID PIPELINE REQUESTS [LOADGEN FLAG...] -- COMMAND...:
# the load generator's run, each COMMAND a template of one request's
# commands; sets RPS, CPU_US, UPSTREAM_CPU_US (with MEASURE_UPSTREAM_PID) and
# P50/P99/P999 (microseconds).
measure_loadgen() {
  local port=$1 pid=$2 pipeline=$3 requests=$4 output before after
  local upstream_pid=${MEASURE_UPSTREAM_PID:-} upstream_before=0 upstream_after=0
  shift 4
  local -a flags=() commands=()
  while [[ $1 != -- ]]; do flags+=("$1"); shift; done
  shift
  local command
  for command in "$@"; do commands+=(--command "$command"); done
  before=$(cpu_ticks "$pid")
  # shellcheck disable=SC2086 # one or more pids
  [[ -z $upstream_pid ]] || upstream_before=$(cpu_ticks $upstream_pid)
  output=$(on_cpu "$CLIENT_CPU" "$LOADGEN_BIN" --port "$port" --clients "$CLIENTS" --pipeline "$pipeline" \
    --requests "$requests" --keyspace "$SESSIONS" "${flags[@]}" "${commands[@]}" 2>&1) ||
    die "loadgen $* (port $port, -P $pipeline) failed: $output"
  after=$(cpu_ticks "$pid")
  # shellcheck disable=SC2086
  [[ -z $upstream_pid ]] || upstream_after=$(cpu_ticks $upstream_pid)
  local field
  for field in rps p50_us p99_us p999_us errors; do
    [[ $output =~ (^| )$field=([0-9.]+) ]] || die "loadgen printed no $field: $output"
    printf -v "LOADGEN_${field^^}" '%s' "${BASH_REMATCH[2]}"
  done
  ((LOADGEN_ERRORS == 0)) || die "loadgen $* got $LOADGEN_ERRORS error replies"
  RPS=$LOADGEN_RPS P50=$LOADGEN_P50_US P99=$LOADGEN_P99_US P999=$LOADGEN_P999_US
  CPU_US=$(per_request "$((after - before))" "$requests")
  UPSTREAM_CPU_US=$(per_request "$((upstream_after - upstream_before))" "$requests")
}

# per_request TICKS REQUESTS: CPU microseconds per request.
per_request() {
  awk -v t="$1" -v hz="$(getconf CLK_TCK)" -v n="$2" 'BEGIN { printf "%.2f", t / hz * 1e6 / n }'
}

# sum A B: their sum, for CPU figures of two processes.
sum() {
  awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", a + b }'
}

# --- the comparisons --------------------------------------------------------

# cpu_times: "<steal> <total>" ticks of each measured CPU (the pinned ones,
# or the whole machine's line when not pinning), space-separated.
cpu_times() {
  awk -v cpus="$SERVER_CPU $CLIENT_CPU" -v pinned="$PINNED" '
    BEGIN { n = split(cpus, want, " "); for (i = 1; i <= n; i++) wanted["cpu" want[i]] = 1 }
    (pinned && ($1 in wanted)) || (!pinned && $1 == "cpu") {
      total = 0
      for (f = 2; f <= 9; f++) total += $f
      printf "%d %d ", $9, total
    }' /proc/stat
}

# stolen_percent BEFORE AFTER: the largest share of a measured CPU's time
# stolen between two cpu_times readings, in percent.
stolen_percent() {
  awk -v a="$1" -v b="$2" 'BEGIN {
    n = split(a, x, " "); split(b, y, " "); worst = 0
    for (i = 1; i < n; i += 2) {
      total = y[i + 1] - x[i + 1]
      if (total > 0 && (y[i] - x[i]) * 100 / total > worst) worst = (y[i] - x[i]) * 100 / total
    }
    printf "%.0f", worst
  }'
}

# rounds_of NAME... : runs `run_NAME` for each NAME, ROUNDS times,
# alternating (ROUND set to a number unique to each run), and keeps each run's RPS, CPU_US and UPSTREAM_CPU_US in
# RUN_RPS[NAME], RUN_CPU[NAME], RUN_UP[NAME] (space-separated), and the
# share of the CPUs stolen during it in RUN_STEAL[NAME]. A run during which
# the hypervisor stole more than MAX_STEAL percent of a measured CPU is run
# again (STEAL_RERUNS times at most; the last one is kept whatever it was).
declare -A RUN_RPS RUN_CPU RUN_UP RUN_STEAL
STEAL_REPEATED=0
STEAL_KEPT=()
rounds_of() {
  local name round attempt before stolen
  for name in "$@"; do RUN_RPS[$name]='' RUN_CPU[$name]='' RUN_UP[$name]='' RUN_STEAL[$name]=''; done
  for ((round = 0; round < ROUNDS; round++)); do
    for name in "$@"; do
      for ((attempt = 0; ; attempt++)); do
        before=$(cpu_times)
        # A run again is a round of its own to runs that number what they
        # create by it (a CREATE run again must not meet its own sessions).
        ROUND=$((round + attempt * ROUNDS)) "run_$name"
        stolen=$(stolen_percent "$before" "$(cpu_times)")
        ((stolen > MAX_STEAL && attempt < STEAL_RERUNS)) || break
        log "$name, round $((round + 1)): $stolen% of a CPU stolen by the hypervisor; running it again"
        STEAL_REPEATED=$((STEAL_REPEATED + 1))
      done
      STEAL_KEPT+=("$stolen")
      RUN_RPS[$name]+=" $RPS" RUN_CPU[$name]+=" $CPU_US" RUN_UP[$name]+=" ${UPSTREAM_CPU_US:-0}"
      RUN_STEAL[$name]+=" $stolen"
    done
  done
}

# med rps|cpu|up NAME: the median of NAME's runs.
med() {
  local -n runs=RUN_${1^^}
  # shellcheck disable=SC2086 # space-separated numbers
  median ${runs[$2]}
}

# The sessions prefilled into the standalone sidecar, in two redis-servers of
# their own on the server CPU: one holding them as hashes with the same fields
# (what HGETALL is compared with), the other as the same JSON that SESSION.GET
# ... JSON returns (what GET is compared with). Each holds only the form it
# is read in: a redis-server holding both (20,000 keys for the sidecar's
# 10,000 sessions) spends more per read, which flattered the sidecar (the same
# binary's SESSION.GET JSON/GET at -P 16 was 1.18 against one holding both,
# 0.88 against one holding the JSON alone).
# Sets HASHES_PORT/HASHES_PID and JSON_PORT/JSON_PID.
start_redis_copies() {
  START_ON_CPU=$SERVER_CPU start_redis_server HASHES_PORT redis-hashes
  HASHES_PID=$LAST_PID
  START_ON_CPU=$SERVER_CPU start_redis_server JSON_PORT redis-json
  JSON_PID=$LAST_PID
  log "storing the $SESSIONS sessions in one redis-server as hashes, in another as their JSON"
  session_hash_commands | pipe_commands "$HASHES_PORT"
  awk -v n="$SESSIONS" 'BEGIN { for (i = 0; i < n; i++) printf "SESSION.GET %012d JSON\n", i }' |
    redis-cli -h 127.0.0.1 -p "$SIDECAR_PORT" >"$WORK_DIR/sessions.json" ||
    die "reading the sessions' JSON failed"
  awk '{ printf "SET %012d %s\n", NR - 1, $0 }' "$WORK_DIR/sessions.json" | pipe_commands "$JSON_PORT"
  local reply
  reply=$(cli "$JSON_PORT" GET 000000004242)
  [[ $reply == "$(cli "$SIDECAR_PORT" SESSION.GET 000000004242 JSON)" ]] ||
    die "redis-server's copy of session 4242 is not its JSON: $reply"
  [[ $(cli "$HASHES_PORT" DBSIZE) == "$SESSIONS" && $(cli "$JSON_PORT" DBSIZE) == "$SESSIONS" ]] ||
    die "the redis-servers of the reads section do not hold $SESSIONS keys each"
}

# Hot reads: the standalone sidecar and redis-server, each alone on the
# server CPU, the same sessions, the same reply.
section_reads() {
  heading "Hot reads vs redis-server (goal: ratio >= 1.00 and no more CPU per request)"
  pinning_note
  local HASHES_PORT HASHES_PID JSON_PORT JSON_PID KEPT_PORT KEPT_PID
  start_redis_copies
  # The same sessions in a sidecar that keeps each session's JSON from a read
  # to its next change (--keep-json yes), measured in the same rounds. Its
  # node id is as long as the first's, so that its replies are too.
  # shellcheck disable=SC2086 # the extra flags are meant to be split
  START_ON_CPU=$SERVER_CPU start_sidecar KEPT_PORT keepjsn ${BENCH_SIDECAR_ARGS:-} --keep-json yes
  KEPT_PID=$LAST_PID
  log "prefilling $SESSIONS sessions into the sidecar that keeps their JSON"
  session_create_commands | pipe_commands "$KEPT_PORT"
  local kept_length
  kept_length=$(cli "$KEPT_PORT" SESSION.GET 000000004242 JSON | wc -c)
  ((kept_length == $(cli "$SIDECAR_PORT" SESSION.GET 000000004242 JSON | wc -c))) ||
    die "the two sidecars' JSON of session 4242 differ in length"
  local pipeline row='%-34s %3s %10s %10s %7s %9s %9s\n'
  # shellcheck disable=SC2059 # the format is the row layout above
  printf "\n$row" comparison -P ours_rps base_rps ratio "ours_us" "base_us"
  for pipeline in 1 "$PIPELINE_DEPTH"; do
    run_session_get() { measure "$SIDECAR_PORT" "$SIDECAR_PID" "$pipeline" SESSION.GET __rand_int__; }
    run_session_json() { measure "$SIDECAR_PORT" "$SIDECAR_PID" "$pipeline" SESSION.GET __rand_int__ JSON; }
    run_kept_json() { measure "$KEPT_PORT" "$KEPT_PID" "$pipeline" SESSION.GET __rand_int__ JSON; }
    run_session_touch() { measure "$SIDECAR_PORT" "$SIDECAR_PID" "$pipeline" SESSION.TOUCH __rand_int__; }
    run_hgetall() { measure "$HASHES_PORT" "$HASHES_PID" "$pipeline" HGETALL "session:__rand_int__"; }
    run_get() { measure "$JSON_PORT" "$JSON_PID" "$pipeline" GET __rand_int__; }
    rounds_of session_get hgetall session_json get kept_json session_touch
    local ours base label r
    for pair in "session_get hgetall SESSION.GET/HGETALL" "session_json get SESSION.GET_JSON/GET" \
      "kept_json get SESSION.GET_JSON,_--keep-json/GET" "session_touch get SESSION.TOUCH/GET"; do
      read -r ours base label <<<"$pair"
      label=${label//_/ }
      r=$(ratio "$(med rps "$ours")" "$(med rps "$base")")
      # shellcheck disable=SC2059
      printf "$row" "$label" "$pipeline" "$(med rps "$ours")" "$(med rps "$base")" "$r" \
        "$(med cpu "$ours")" "$(med cpu "$base")"
      summary_row "$label" "$pipeline" "$r" 1 at-least "$(med cpu "$ours")" "$(med cpu "$base")" \
        "CPU ratio $(ratio "$(med cpu "$ours")" "$(med cpu "$base")") (goal <= 1.00)"
    done
  done
  kill -TERM "$KEPT_PID" 2>/dev/null || true
  wait "$KEPT_PID" 2>/dev/null || true
}

# Passthrough: GET and SET of 64-byte values through a sidecar in front of
# redis-server, against redis-server directly and through twemproxy. The
# proxy and its upstream share the server CPU, so a ratio is the whole cost
# of the extra hop; their CPU per request is summed.
section_passthrough() {
  heading "Passthrough vs redis-server direct and twemproxy (goals: >= 0.90 of direct; >= 3x twemproxy at -P $PIPELINE_DEPTH)"
  pinning_note
  ensure_nutcracker
  local sidecar_port sidecar_pid nutcracker_port nutcracker_stats_port nutcracker_pid
  # shellcheck disable=SC2086 # the extra flags are meant to be split
  START_ON_CPU=$SERVER_CPU start_passthrough sidecar_port passthrough ${BENCH_PASSTHROUGH_ARGS:-}
  sidecar_pid=$LAST_PID
  claim_port nutcracker_port
  claim_port nutcracker_stats_port
  printf '%s\n' "bench:" "  listen: 127.0.0.1:$nutcracker_port" "  redis: true" \
    "  hash: fnv1a_64" "  distribution: ketama" "  servers:" "    - 127.0.0.1:$REDIS_PORT:1" \
    >"$WORK_DIR/nutcracker.yml"
  START_ON_CPU=$SERVER_CPU start_process nutcracker nutcracker -c "$WORK_DIR/nutcracker.yml" \
    -o "$WORK_DIR/nutcracker-own.log" -a 127.0.0.1 -s "$nutcracker_stats_port"
  nutcracker_pid=$LAST_PID
  wait_for_set nutcracker "$nutcracker_pid" "$nutcracker_port"

  local value reply port
  value=$(printf 'x%.0s' {1..64})
  awk -v n="$SESSIONS" -v v="$value" 'BEGIN { for (i = 0; i < n; i++) printf "SET pt:%012d %s\n", i, v }' |
    pipe_commands "$REDIS_PORT"
  for port in "$sidecar_port" "$nutcracker_port"; do
    reply=$(cli "$port" GET pt:000000004242) || die "GET through port $port failed: $reply"
    [[ $reply == "$value" ]] || die "GET through port $port replied '$reply'"
  done

  local row='%-5s %3s %10s %10s %10s %8s %8s %9s %9s %9s\n'
  # shellcheck disable=SC2059 # the format is the row layout above
  printf "\n$row" cmd -P direct sidecar twemproxy "sc/dir" "sc/twem" "dir_us" "sc+up_us" "twem+up_us"
  local name pipeline d s t
  local -a command
  for name in GET SET; do
    if [[ $name == GET ]]; then
      command=(GET "pt:__rand_int__")
    else
      command=(SET "pt:__rand_int__" "$value")
    fi
    for pipeline in 1 "$PIPELINE_DEPTH"; do
      run_direct() { measure "$REDIS_PORT" "$REDIS_PID" "$pipeline" "${command[@]}"; }
      run_sidecar() { MEASURE_UPSTREAM_PID=$REDIS_PID measure "$sidecar_port" "$sidecar_pid" "$pipeline" "${command[@]}"; }
      run_twemproxy() { MEASURE_UPSTREAM_PID=$REDIS_PID measure "$nutcracker_port" "$nutcracker_pid" "$pipeline" "${command[@]}"; }
      # What redis-server spends to read a request and write a reply and
      # nothing else: the least a proxy in front of it could spend per
      # request on the application's side of the hop.
      run_ping() { measure "$REDIS_PORT" "$REDIS_PID" "$pipeline" PING; }
      if ((pipeline == PIPELINE_DEPTH)); then
        rounds_of direct sidecar twemproxy ping
      else
        rounds_of direct sidecar twemproxy
      fi
      d=$(med rps direct) s=$(med rps sidecar) t=$(med rps twemproxy)
      local sc_cpu tw_cpu
      sc_cpu=$(sum "$(med cpu sidecar)" "$(med up sidecar)")
      tw_cpu=$(sum "$(med cpu twemproxy)" "$(med up twemproxy)")
      # shellcheck disable=SC2059
      printf "$row" "$name" "$pipeline" "$d" "$s" "$t" "$(ratio "$s" "$d")" "$(ratio "$s" "$t")" \
        "$(med cpu direct)" "$sc_cpu" "$tw_cpu"
      summary_row "passthrough $name / direct" "$pipeline" "$(ratio "$s" "$d")" 0.9 at-least \
        "$sc_cpu" "$(med cpu direct)" "sidecar $(med cpu sidecar) + redis $(med up sidecar)"
      if ((pipeline == PIPELINE_DEPTH)); then
        summary_row "passthrough $name / twemproxy" "$pipeline" "$(ratio "$s" "$t")" 3 at-least \
          "$sc_cpu" "$tw_cpu" "twemproxy / direct $(ratio "$t" "$d")"
        # A bound, as a CPU ratio: a proxy spending per request what
        # redis-server spends on a PING, in front of the redis-server that
        # the sidecar's batches leave behind it.
        local floor_cpu
        floor_cpu=$(sum "$(med cpu ping)" "$(med up sidecar)")
        local bound
        bound=$(ratio "$(med cpu direct)" "$floor_cpu")
        summary_row "passthrough $name, a proxy at a PING's cost" "$pipeline" \
          "$bound" "" "" "$floor_cpu" "$(med cpu direct)" \
          "CPU: direct / (redis PING $(med cpu ping) + redis behind $(med up sidecar)); sidecar $(med cpu sidecar)"
        # The same bound against twemproxy: what such a proxy would do over
        # what twemproxy does, both relative to direct.
        summary_row "passthrough $name / twemproxy, at a PING's cost" "$pipeline" \
          "$(awk -v c="$(med cpu direct)" -v f="$floor_cpu" -v t="$t" -v d="$d" \
            'BEGIN { if (f > 0 && t > 0) printf "%.2f", (c / f) * (d / t); else print "n/a" }')" "" "" "" "" \
          "the bound above over twemproxy / direct $(ratio "$t" "$d")"
      else
        summary_row "passthrough $name / twemproxy" "$pipeline" "$(ratio "$s" "$t")" "" "" \
          "$sc_cpu" "$tw_cpu" "twemproxy / direct $(ratio "$t" "$d")"
      fi
    done
  done
  printf '\nsc+up_us, twem+up_us: the proxy and the redis-server behind it, summed.\n'
}

# The seed design's create: the session as JSON, the user's index, the
# expiry, the connection's index; four commands sent together.
readonly SEED_JSON='{"id":"{n}","user":"u{r}","conn":"c{n}","status":"active","node":"bench","created":1764633600000,"last_active":1764633600000,"expires":1764637200000,"ttl":3600000,"version":1,"attrs":{"locale":"en-US"}}'
readonly -a SEED_CREATE=("SET seed:s:{n} $SEED_JSON" "SADD seed:u:u{r} {n}" "EXPIRE seed:s:{n} 3600" "SET seed:c:c{n} {n}")

# Write-through SESSION.CREATE against the seed's four-command create, each
# request the same session (user, conn, one attribute, TTL), pipelined the
# same way. The write-through sidecar runs on the load generator's CPU, as
# in the application's pod; the shared upstream alone on the server CPU,
# where its CPU per create is what is compared.
section_write_through() {
  heading "Write-through CREATE vs the seed design's four-command create (goals: >= 1.5x throughput at -P 1; <= 1.5x upstream CPU at -P $PIPELINE_DEPTH)"
  pinning_note
  START_ON_CPU=$CLIENT_CPU start_sidecar WRITE_THROUGH_PORT write-through --upstream "redis://127.0.0.1:$REDIS_PORT"
  WRITE_THROUGH_PID=$LAST_PID
  local deadline=$((SECONDS + START_TIMEOUT_SECONDS))
  until [[ $(info_field "$WRITE_THROUGH_PORT" upstream upstream_state) == up ]]; do
    ((SECONDS < deadline)) || die "the write-through sidecar did not connect to its upstream"
    sleep 0.1
  done
  local row='%-22s %3s %10s %10s %7s %12s %12s %12s\n' pipeline requests
  # shellcheck disable=SC2059 # the format is the row layout above
  printf "\n$row" comparison -P ours_rps seed_rps ratio "ours_up_us" "seed_up_us" "sidecar_us"
  for pipeline in 1 "$PIPELINE_DEPTH"; do
    requests=$WRITE_REQUESTS
    ((pipeline == 1)) || requests=$PIPELINED_WRITE_REQUESTS
    # {n} is unique over every round: each create makes a new session.
    run_create() {
      MEASURE_UPSTREAM_PID=$REDIS_PID measure_loadgen "$WRITE_THROUGH_PORT" "$WRITE_THROUGH_PID" "$pipeline" \
        "$requests" --first "$((ROUND * requests + pipeline * 100000000))" -- \
        "SESSION.CREATE USER u{r} CONN c{n} TTL 3600 ATTR locale en-US"
    }
    run_seed() {
      MEASURE_UPSTREAM_PID=$REDIS_PID measure_loadgen "$REDIS_PORT" "$REDIS_PID" "$pipeline" \
        "$requests" --first "$((ROUND * requests + pipeline * 100000000))" -- "${SEED_CREATE[@]}"
    }
    rounds_of create seed
    local r up
    r=$(ratio "$(med rps create)" "$(med rps seed)")
    up=$(ratio "$(med up create)" "$(med up seed)")
    # shellcheck disable=SC2059
    printf "$row" "SESSION.CREATE / seed" "$pipeline" "$(med rps create)" "$(med rps seed)" "$r" \
      "$(med up create)" "$(med up seed)" "$(med cpu create)"
    if ((pipeline == 1)); then
      summary_row "write-through CREATE / seed create" "$pipeline" "$r" 1.5 at-least \
        "$(med up create)" "$(med up seed)" "upstream CPU ratio $up; sidecar $(med cpu create) us"
    else
      summary_row "write-through CREATE upstream CPU / seed's" "$pipeline" "$up" 1.5 at-most \
        "$(med up create)" "$(med up seed)" "throughput ratio $r; sidecar $(med cpu create) us"
    fi
  done
  printf '\nours_up_us, seed_up_us: CPU of the upstream redis-server per create;\n'
  printf 'sidecar_us: of the write-through sidecar (on the load generator'"'"'s CPU).\n'
  create_bounds
}

# Bounds that no create keeping the guarantees can pass, measured the same
# way as the rows above:
# - the floor of the upstream's work per create: the seed's four commands
#   plus the three writes the guarantees add to them (the expiry index's
#   ZADD, the durable event's XADD, the event's PUBLISH), plain pipelined
#   commands with no script, no atomicity and no ordered user index, at -P 16;
# - from it, the most creates per second the upstream could take if a create
#   cost it only that floor, against the seed's unpipelined throughput;
# - what the sidecar itself allows unpipelined on the load generator's CPU:
#   a PING through it, which does nothing, against the seed's create.
create_bounds() {
  local at=$(( $(date +%s%3N) + 3600000 )) requests=$PIPELINED_WRITE_REQUESTS
  local -a floor=("${SEED_CREATE[@]}" "ZADD floor:x $at {n}"
    "XADD floor:e MAXLEN ~ 100000 * event created id {n} user u{r} conn c{n} node bench at $at"
    "PUBLISH floor:events {\"event\":\"created\",\"id\":\"{n}\",\"user\":\"u{r}\",\"conn\":\"c{n}\",\"node\":\"bench\",\"at\":$at}")
  run_seed() {
    MEASURE_UPSTREAM_PID=$REDIS_PID measure_loadgen "$REDIS_PORT" "$REDIS_PID" "$PIPELINE_DEPTH" \
      "$requests" --first "$((ROUND * requests + 300000000))" -- "${SEED_CREATE[@]}"
  }
  run_floor() {
    MEASURE_UPSTREAM_PID=$REDIS_PID measure_loadgen "$REDIS_PORT" "$REDIS_PID" "$PIPELINE_DEPTH" \
      "$requests" --first "$((ROUND * requests + 400000000))" -- "${floor[@]}"
  }
  # The same commands made atomic the cheapest way there is, without a
  # script: MULTI ... EXEC (it cannot check anything, so it is still short
  # of a create: no refusal of a taken id, no displaced connection).
  run_atomic() {
    MEASURE_UPSTREAM_PID=$REDIS_PID measure_loadgen "$REDIS_PORT" "$REDIS_PID" "$PIPELINE_DEPTH" \
      "$requests" --first "$((ROUND * requests + 450000000))" -- MULTI "${floor[@]}" EXEC
  }
  rounds_of seed floor atomic
  local up
  up=$(ratio "$(med up floor)" "$(med up seed)")
  printf '\nfloor of any create (the seed + ZADD, XADD, PUBLISH; plain, -P %s): %s us of upstream CPU per create, %sx the seed'"'"'s %s us\n' \
    "$PIPELINE_DEPTH" "$(med up floor)" "$up" "$(med up seed)"
  summary_row "floor: seed + expiry, event, publish / seed" "$PIPELINE_DEPTH" "$up" 1.5 at-most \
    "$(med up floor)" "$(med up seed)" "upstream CPU ratio: bounds CREATE's from below"
  up=$(ratio "$(med up atomic)" "$(med up seed)")
  printf 'the same in MULTI/EXEC (atomic, no checks): %s us, %sx the seed\n' "$(med up atomic)" "$up"
  summary_row "floor in MULTI/EXEC / seed" "$PIPELINE_DEPTH" "$up" 1.5 at-most \
    "$(med up atomic)" "$(med up seed)" "upstream CPU ratio: the floor made atomic without a script"

  requests=$WRITE_REQUESTS
  run_seed() {
    MEASURE_UPSTREAM_PID=$REDIS_PID measure_loadgen "$REDIS_PORT" "$REDIS_PID" 1 \
      "$requests" --first "$((ROUND * requests + 500000000))" -- "${SEED_CREATE[@]}"
  }
  run_ping() {
    MEASURE_UPSTREAM_PID=$REDIS_PID measure_loadgen "$WRITE_THROUGH_PORT" "$WRITE_THROUGH_PID" 1 \
      "$requests" -- PING
  }
  rounds_of ping seed
  local r upstream_bound
  upstream_bound=$(awk -v us="$(med up floor)" 'BEGIN { printf "%.0f", (us > 0 ? 1e6 / us : 0) }')
  r=$(ratio "$upstream_bound" "$(med rps seed)")
  printf 'an upstream doing only that floor takes at most %s creates/s: %sx the seed'"'"'s %s creates/s at -P 1\n' \
    "$upstream_bound" "$r" "$(med rps seed)"
  summary_row "bound: upstream at the floor / seed create" 1 "$r" 1.5 at-least \
    "$(med up floor)" "$(med up seed)" "1e6 / floor us over the seed's rps: bounds CREATE's throughput ratio from above"
  r=$(ratio "$(med rps ping)" "$(med rps seed)")
  printf 'a PING through the sidecar on the load generator'"'"'s CPU (-P 1): %s requests/s, %sx the seed'"'"'s creates/s\n' \
    "$(med rps ping)" "$r"
  summary_row "PING via write-through / seed create" 1 "$r" "" "" \
    "$(med cpu ping)" "$(med cpu seed)" "what the sidecar's side allows"
}

# Latency at a fixed offered load: half of what the slowest of the four
# servers answers unpipelined, so that none of them queues; direct against
# through the sidecar, in one table.
section_latency() {
  heading "Latency at a fixed offered load (half of the slowest server's unpipelined maximum)"
  pinning_note
  local passthrough_port passthrough_pid
  # The hashes HGETALL reads, beside the strings GET reads.
  session_hash_commands | pipe_commands "$REDIS_PORT"
  START_ON_CPU=$SERVER_CPU start_passthrough passthrough_port latency-passthrough
  passthrough_pid=$LAST_PID
  local rate=0 requests
  run_latency() {
    case $1 in
      get) measure_loadgen "$REDIS_PORT" "$REDIS_PID" 1 "$requests" --rate "$rate" -- "GET {r}" ;;
      passthrough_get) measure_loadgen "$passthrough_port" "$passthrough_pid" 1 "$requests" --rate "$rate" -- "GET {r}" ;;
      hgetall) measure_loadgen "$REDIS_PORT" "$REDIS_PID" 1 "$requests" --rate "$rate" -- "HGETALL session:{r}" ;;
      session_get) measure_loadgen "$SIDECAR_PORT" "$SIDECAR_PID" 1 "$requests" --rate "$rate" -- "SESSION.GET {r}" ;;
    esac
  }
  local names=(get passthrough_get hgetall session_get) name slowest=
  requests=$REQUESTS
  for name in "${names[@]}"; do
    run_latency "$name"
    if [[ -z $slowest ]] || awk -v a="$RPS" -v b="$slowest" 'BEGIN { exit !(a < b) }'; then
      slowest=$RPS
    fi
  done
  rate=$(awk -v m="$slowest" 'BEGIN { printf "%d", m / 2 }')
  requests=$((rate * 3))
  printf 'offered: %s requests/s from %s connections, %s requests per run (the slowest answered %s/s)\n\n' \
    "$rate" "$CLIENTS" "$requests" "$slowest"
  local row='%-34s %9s %9s %9s\n'
  # shellcheck disable=SC2059 # the format is the row layout above
  printf "$row" command p50_us p99_us p999_us
  local -A p50 p99 p999
  local round
  for name in "${names[@]}"; do p50[$name]='' p99[$name]='' p999[$name]=''; done
  for ((round = 0; round < ROUNDS; round++)); do
    for name in "${names[@]}"; do
      run_latency "$name"
      p50[$name]+=" $P50" p99[$name]+=" $P99" p999[$name]+=" $P999"
    done
  done
  local -A label=([get]="GET direct" [passthrough_get]="GET through the sidecar" [hgetall]="HGETALL (redis-server)" [session_get]="SESSION.GET (standalone sidecar)")
  for name in "${names[@]}"; do
    # shellcheck disable=SC2086 # space-separated numbers
    p50[$name]=$(median ${p50[$name]}) p99[$name]=$(median ${p99[$name]}) p999[$name]=$(median ${p999[$name]})
    # shellcheck disable=SC2059
    printf "$row" "${label[$name]}" "${p50[$name]}" "${p99[$name]}" "${p999[$name]}"
  done
  summary_row "latency p50/p99/p99.9 passthrough GET / direct" 1 \
    "$(ratio "${p99[passthrough_get]}" "${p99[get]}")" "" "" "" "" \
    "ratio of p99; p50 $(ratio "${p50[passthrough_get]}" "${p50[get]}"), p99.9 $(ratio "${p999[passthrough_get]}" "${p999[get]}")"
  summary_row "latency p50/p99/p99.9 SESSION.GET / HGETALL" 1 \
    "$(ratio "${p99[session_get]}" "${p99[hgetall]}")" "" "" "" "" \
    "ratio of p99; p50 $(ratio "${p50[session_get]}" "${p50[hgetall]}"), p99.9 $(ratio "${p999[session_get]}" "${p999[hgetall]}")"
  printf '\nEach figure is the median over %s rounds; latency counts from when a\nrequest was due, so a stall shows (no coordinated omission).\n' "$ROUNDS"
}

# Cluster: write-through SESSION.CREATE with a 3-master Redis Cluster as the
# upstream against one redis-server, alternating in each round: creations
# per second, the CPU per creation of the upstream (every master summed) and
# of the sidecar, and each master's share of that CPU (the shards spread the
# sessions, so each should carry a third). On a machine with fewer cores than
# masters the throughput cannot grow with them; the CPU per creation and its
# spread are the figures that carry over.
#
# Pinned when the machine has two CPUs or more: the upstreams (the three
# masters, or the one server) on CPU 1, the write-through sidecars and the
# load generator on CPU 0, as a sidecar runs beside its application.
section_cluster() {
  local pinned=0
  if (($(nproc) >= 2)) && command -v taskset >/dev/null 2>&1; then
    pinned=1
  fi
  heading "Write-through CREATE on a 3-master cluster vs one redis-server (medians of $ROUNDS rounds$( ((pinned)) && echo ", pinned: upstreams on CPU 1, sidecars and redis-benchmark on CPU 0"))"
  ((pinned)) || printf 'note: not pinned (fewer than 2 CPUs, or no taskset): the figures mix the processes fighting for the cores\n\n'
  pin() { ((pinned)) && taskset -pc "$1" "$2" >/dev/null; true; }
  local masters=() pids=() port node_ports=() i
  for i in 0 1 2; do
    # The cluster bus listens on port + 10000: keep the port low enough.
    port=
    while [[ -z $port ]] || ((port > 55535)); do claim_port port; done
    start_process "cluster-$i" redis-server --bind 127.0.0.1 --port "$port" \
      --save '' --appendonly no --dir "$WORK_DIR" --cluster-enabled yes \
      --cluster-config-file "$WORK_DIR/nodes-$i.conf" --cluster-node-timeout 10000
    wait_for_ping "cluster-$i" "$LAST_PID" "$port"
    pin 1 "$LAST_PID"
    masters+=("127.0.0.1:$port")
    node_ports+=("$port")
    pids+=("$LAST_PID")
  done
  timeout 60 redis-cli --cluster create "${masters[@]}" --cluster-replicas 0 --cluster-yes \
    >"$WORK_DIR/cluster-create.log" 2>&1 || die "redis-cli --cluster create failed: $(cat "$WORK_DIR/cluster-create.log")"
  local deadline=$((SECONDS + START_TIMEOUT_SECONDS))
  for port in "${node_ports[@]}"; do
    until cli "$port" CLUSTER INFO 2>/dev/null | grep -q cluster_state:ok; do
      ((SECONDS < deadline)) || die "the cluster never reached cluster_state:ok"
      sleep 0.1
    done
  done
  local cluster_url single_port cluster_port single_pid cluster_pid
  cluster_url="redis+cluster://$(IFS=,; echo "${masters[*]}")"
  start_sidecar cluster_port cluster-sidecar --upstream "$cluster_url"
  cluster_pid=$LAST_PID
  start_sidecar single_port single-sidecar --upstream "redis://127.0.0.1:$REDIS_PORT"
  single_pid=$LAST_PID
  pin 0 "$cluster_pid"
  pin 0 "$single_pid"
  pin 1 "$REDIS_PID"
  for port in "$cluster_port" "$single_port"; do
    deadline=$((SECONDS + START_TIMEOUT_SECONDS))
    until [[ $(info_field "$port" upstream upstream_state) == up ]]; do
      ((SECONDS < deadline)) || die "a write-through sidecar did not connect to its upstream"
      sleep 0.1
    done
  done

  local row='%-10s %8s %12s %14s %14s %s\n'
  # shellcheck disable=SC2059 # the format is the row layout above
  printf "$row" upstream pipeline creates/s "upstream_us/op" "sidecar_us/op" "each master's share of the upstream CPU"
  local pipeline round cluster_rps=() cluster_up=() cluster_sc=() single_rps=() single_up=() single_sc=()
  local shares before=() after=() ticks
  for pipeline in 1 16; do
    cluster_rps=() cluster_up=() cluster_sc=() single_rps=() single_up=() single_sc=()
    local share_ticks=(0 0 0)
    for ((round = 0; round < ROUNDS; round++)); do
      for i in 0 1 2; do before[i]=$(cpu_ticks "${pids[i]}"); done
      MEASURE_REQUESTS=$WRITE_REQUESTS MEASURE_PIPELINED_REQUESTS=$PIPELINED_WRITE_REQUESTS \
        MEASURE_UPSTREAM_PID="${pids[*]}" \
        measure "$cluster_port" "$cluster_pid" "$pipeline" SESSION.CREATE USER "u:__rand_int__" TTL 3600 ATTR locale en-US
      for i in 0 1 2; do
        after[i]=$(cpu_ticks "${pids[i]}")
        share_ticks[i]=$((share_ticks[i] + after[i] - before[i]))
      done
      cluster_rps+=("$RPS") cluster_up+=("$UPSTREAM_CPU_US") cluster_sc+=("$CPU_US")
      MEASURE_REQUESTS=$WRITE_REQUESTS MEASURE_PIPELINED_REQUESTS=$PIPELINED_WRITE_REQUESTS \
        MEASURE_UPSTREAM_PID=$REDIS_PID \
        measure "$single_port" "$single_pid" "$pipeline" SESSION.CREATE USER "u:__rand_int__" TTL 3600 ATTR locale en-US
      single_rps+=("$RPS") single_up+=("$UPSTREAM_CPU_US") single_sc+=("$CPU_US")
    done
    ticks=$((share_ticks[0] + share_ticks[1] + share_ticks[2]))
    shares=$(awk -v a="${share_ticks[0]}" -v b="${share_ticks[1]}" -v c="${share_ticks[2]}" -v t="$ticks" \
      'BEGIN { if (t > 0) printf "%.0f%% %.0f%% %.0f%%", 100*a/t, 100*b/t, 100*c/t; else print "n/a" }')
    # shellcheck disable=SC2059
    printf "$row" "3 masters" "$pipeline" "$(median "${cluster_rps[@]}")" "$(median "${cluster_up[@]}")" \
      "$(median "${cluster_sc[@]}")" "$shares"
    # shellcheck disable=SC2059
    printf "$row" "1 server" "$pipeline" "$(median "${single_rps[@]}")" "$(median "${single_up[@]}")" \
      "$(median "${single_sc[@]}")" ""
    printf '%-10s %8s %12s\n' "ratio" "$pipeline" \
      "$(ratio "$(median "${cluster_rps[@]}")" "$(median "${single_rps[@]}")")"
  done
  printf '\nupstream_us/op: CPU of the upstream per creation (the three masters summed);\n'
  printf 'sidecar_us/op: of the sidecar. Each creation is one script call in the\n'
  printf "shard of its user (the generated id lands there).\n"
}

# start_passthrough VAR NAME [FLAG...]: a sidecar forwarding to REDIS_PORT,
# once its upstream connection is up; sets VAR to its port and LAST_PID.
start_passthrough() {
  local target=$1 label=$2 started_port
  shift 2
  start_sidecar started_port "$label" --upstream "redis://127.0.0.1:$REDIS_PORT" "$@"
  local deadline=$((SECONDS + START_TIMEOUT_SECONDS))
  until [[ $(info_field "$started_port" upstream upstream_state) == up ]]; do
    ((SECONDS < deadline)) || die "$label did not connect to its upstream"
    sleep 0.1
  done
  printf -v "$target" '%s' "$started_port"
}

# twemproxy is only needed by the passthrough section: installed on demand
# (the test suite never needs it).
ensure_nutcracker() {
  command -v nutcracker >/dev/null 2>&1 && return 0
  command -v apt-get >/dev/null 2>&1 || die "nutcracker (twemproxy) is required for the passthrough section"
  log "installing nutcracker (twemproxy)"
  if [[ $(id -u) -eq 0 ]]; then
    env DEBIAN_FRONTEND=noninteractive apt-get install -y -q nutcracker >/dev/null
  else
    sudo -n env DEBIAN_FRONTEND=noninteractive apt-get install -y -q nutcracker >/dev/null
  fi
  command -v nutcracker >/dev/null 2>&1 || die "nutcracker is still missing after installation"
  # The package may start a system service: nothing here uses it.
  if command -v service >/dev/null 2>&1; then
    service nutcracker stop >/dev/null 2>&1 || true
  fi
}

# wait_for_set NAME PID PORT: twemproxy answers no PING; a SET shows it is up.
wait_for_set() {
  local name=$1 pid=$2 port=$3
  local deadline=$((SECONDS + START_TIMEOUT_SECONDS))
  until [[ $(cli "$port" SET bench:probe 1 2>/dev/null) == OK ]]; do
    kill -0 "$pid" 2>/dev/null || die "$name exited during startup"
    ((SECONDS < deadline)) || die "$name did not answer on port $port within ${START_TIMEOUT_SECONDS}s"
    sleep 0.1
  done
}

# The sidecar's hot-map bytes per session (its indexes included) against what
# redis-server spends on the same sessions stored as hashes with their expiry
# and their user and connection indexes.
section_memory() {
  heading "Memory per session vs redis-server hash + indexes (goal: ratio <= 1.00)"
  local sidecar_bytes sidecar_sessions redis_before redis_after sidecar_rss_kb
  sidecar_bytes=$(info_field "$SIDECAR_PORT" memory used_memory)
  sidecar_rss_kb=$(rss_kb "$SIDECAR_PID")
  sidecar_sessions=$(cli "$SIDECAR_PORT" SESSION.COUNT LOCAL) || sidecar_sessions=
  # A redis-server of its own, holding nothing else.
  local memory_port memory_pid
  START_ON_CPU=$SERVER_CPU start_redis_server memory_port redis-memory
  memory_pid=$LAST_PID
  local redis_rss_before_kb redis_rss_after_kb
  redis_before=$(info_field "$memory_port" memory used_memory)
  redis_rss_before_kb=$(rss_kb "$memory_pid")
  session_hash_commands indexes | pipe_commands "$memory_port"
  redis_after=$(info_field "$memory_port" memory used_memory)
  redis_rss_after_kb=$(rss_kb "$memory_pid")
  kill -TERM "$memory_pid" 2>/dev/null || true
  wait "$memory_pid" 2>/dev/null || true

  local sidecar_per_session=n/a redis_per_session=n/a
  if [[ $sidecar_bytes =~ ^[0-9]+$ && $sidecar_sessions =~ ^[1-9][0-9]*$ ]]; then
    sidecar_per_session=$((sidecar_bytes / sidecar_sessions))
  fi
  if [[ $redis_before =~ ^[0-9]+$ && $redis_after =~ ^[0-9]+$ ]]; then
    redis_per_session=$(((redis_after - redis_before) / SESSIONS))
  fi
  local sidecar_rss_per_session=n/a redis_rss_per_session=n/a
  if [[ $sidecar_rss_kb =~ ^[0-9]+$ && $SIDECAR_RSS_EMPTY_KB =~ ^[0-9]+$ ]]; then
    sidecar_rss_per_session=$(((sidecar_rss_kb - SIDECAR_RSS_EMPTY_KB) * 1024 / SESSIONS))
  fi
  if [[ $redis_rss_before_kb =~ ^[0-9]+$ && $redis_rss_after_kb =~ ^[0-9]+$ ]]; then
    redis_rss_per_session=$(((redis_rss_after_kb - redis_rss_before_kb) * 1024 / SESSIONS))
  fi
  local r=n/a r_rss=n/a
  if [[ $sidecar_per_session != n/a && $redis_per_session != n/a ]]; then
    r=$(ratio "$sidecar_per_session" "$redis_per_session")
  fi
  if [[ $sidecar_rss_per_session != n/a && $redis_rss_per_session =~ ^[1-9][0-9]*$ ]]; then
    r_rss=$(ratio "$sidecar_rss_per_session" "$redis_rss_per_session")
  fi
  printf '%-52s %s\n' \
    "sidecar bytes/session (INFO used_memory, counted)" "$sidecar_per_session" \
    "redis-server bytes/session (used_memory delta)" "$redis_per_session" \
    "sidecar bytes/session (resident memory delta)" "$sidecar_rss_per_session" \
    "redis-server bytes/session (resident memory delta)" "$redis_rss_per_session" \
    "ratio (counted: used_memory)" "$r" \
    "ratio (resident)" "$r_rss" \
    "verdict (counted)" "$(verdict "$r" 1 at-most)" \
    "verdict (resident)" "$(verdict "$r_rss" 1 at-most)"
}

# Idle connections: resident memory per connection, sidecar vs
# redis-server, and what stays resident once they closed.
readonly IDLE_CONNECTIONS=${BENCH_IDLE_CONNECTIONS:-5000}
section_idle_connections() {
  heading "Idle connections: $IDLE_CONNECTIONS each, resident bytes per connection (goal: sidecar < 4096)"
  ulimit -n $((IDLE_CONNECTIONS * 2 + 256)) 2>/dev/null || true
  local name port pid
  for name in sidecar redis-server; do
    if [[ $name == sidecar ]]; then port=$SIDECAR_PORT pid=$SIDECAR_PID; else port=$REDIS_PORT pid=$REDIS_PID; fi
    python3 - "$port" "$pid" "$IDLE_CONNECTIONS" "$name" <<'PY'
import socket, sys, time
port, pid, n, name = int(sys.argv[1]), sys.argv[2], int(sys.argv[3]), sys.argv[4]
def rss():
    with open(f"/proc/{pid}/status") as status:
        return next(int(l.split()[1]) for l in status if l.startswith("VmRSS:"))
before = rss()
socks = [socket.create_connection(("127.0.0.1", port)) for _ in range(n)]
for s in socks:
    s.sendall(b"PING\r\n")
for s in socks:
    s.recv(16)
# At rest: after both servers' housekeeping (Redis frees idle query buffers
# within 2 s, the sidecar trims freed memory every 5 s).
time.sleep(6)
held = rss()
for s in socks:
    s.close()
time.sleep(7)
print(f"{name + ' bytes per idle connection':<52} {(held - before) * 1024 // n}")
print(f"{name + ' KiB still resident 7 s after they closed':<52} {max(rss() - before, 0)}")
PY
  done
}

# SESSION.MIGRATE of every session between two standalone sidecars on
# loopback, and the same through SIGTERM's drain to a third.
section_migration() {
  heading "Migration: $MIGRATE_SESSIONS sessions between two sidecars (goal: < 0.5 s)"
  local from to third
  start_sidecar from migrate-a
  local from_pid=$LAST_PID
  start_sidecar to migrate-b
  start_sidecar third migrate-c
  log "prefilling $MIGRATE_SESSIONS sessions into migrate-a"
  session_create_commands "$MIGRATE_SESSIONS" | pipe_commands "$from"

  local started ended moved ms
  started=$(date +%s%N)
  moved=$(cli "$from" SESSION.MIGRATE 127.0.0.1 "$to" ALL)
  ended=$(date +%s%N)
  ms=$(((ended - started) / 1000000))
  [[ $moved == "$MIGRATE_SESSIONS" ]] || die "SESSION.MIGRATE moved '$moved' of $MIGRATE_SESSIONS"
  printf '%-44s %s\n' \
    "SESSION.MIGRATE ... ALL, sessions moved" "$moved" \
    "wall time (ms, redis-cli round trip)" "$ms" \
    "verdict" "$(awk -v ms="$ms" 'BEGIN { print (ms < 500) ? "ok" : "BELOW GOAL" }')"

  # And back through a drain: SIGTERM on migrate-b hands them to the
  # only peer it knows, migrate-c (migrate-a refuses nothing, but is
  # not among migrate-b's peers).
  local drainer drainer_pid
  start_sidecar drainer migrate-d --peers "127.0.0.1:$third"
  drainer_pid=$LAST_PID
  cli "$to" SESSION.MIGRATE 127.0.0.1 "$drainer" ALL >/dev/null
  started=$(date +%s%N)
  kill -TERM "$drainer_pid"
  wait "$drainer_pid" 2>/dev/null || die "the draining sidecar did not exit 0"
  ended=$(date +%s%N)
  ms=$(((ended - started) / 1000000))
  printf '%-44s %s\n' \
    "SIGTERM drain to one peer, sessions there" "$(cli "$third" SESSION.COUNT LOCAL)" \
    "wall time to exit 0 (ms)" "$ms"
  kill "$from_pid" 2>/dev/null || true
}

# --- reconnect: the example gateway's drain ----------------------------------

readonly RECONNECT_CLIENTS=${BENCH_RECONNECT_CLIENTS:-10000}
readonly RECONNECT_ROUNDS=${BENCH_RECONNECT_ROUNDS:-3}
GATEWAY_BIN=
GATEWAY_LOAD_BIN=

# The example gateway and its load client (examples/gateway/,
# examples/gateway_load.rs), built with the release profile.
build_gateway_examples() {
  log "cargo build --release --example gateway --example gateway_load"
  cargo build --release --example gateway --example gateway_load
  GATEWAY_BIN=${CARGO_TARGET_DIR:-target}/release/examples/gateway
  GATEWAY_LOAD_BIN=${CARGO_TARGET_DIR:-target}/release/examples/gateway_load
  [[ -x $GATEWAY_BIN && -x $GATEWAY_LOAD_BIN ]] || die "no gateway examples after the build"
}

# wait_for_line NAME PID PATTERN: waits until NAME's log has a line matching
# PATTERN (grep -E), or dies when the process exits or the start-up
# deadline passes.
wait_for_line() {
  local name=$1 pid=$2 pattern=$3 deadline=$((SECONDS + START_TIMEOUT_SECONDS))
  until grep -qE "$pattern" "$WORK_DIR/$name.log" 2>/dev/null; do
    kill -0 "$pid" 2>/dev/null || die "$name exited"
    ((SECONDS < deadline)) || die "$name: no line matching '$pattern' within ${START_TIMEOUT_SECONDS}s"
    sleep 0.05
  done
}

# load_field NAME KIND FIELD: FIELD of the last KIND line (status or
# summary) the load client NAME printed; empty when absent.
load_field() {
  { grep "^{\"$2\"" "$WORK_DIR/$1.log" 2>/dev/null || true; } | tail -n 1 |
    { grep -oE "\"$3\":[0-9]+" || true; } | cut -d: -f2
}

# wait_for_load NAME PID WHAT CONDITION: waits until CONDITION (an awk
# expression over the status fields connected, writing and resumed) holds
# for the load client's last status line; dies at the first error the load
# client counts.
wait_for_load() {
  local name=$1 pid=$2 what=$3 condition=$4 deadline=$((SECONDS + 120)) fields
  while :; do
    fields="$(load_field "$name" status connected) $(load_field "$name" status writing)"
    fields+=" $(load_field "$name" status resumed) $(load_field "$name" status errors)"
    if [[ $fields =~ ^[0-9]+\ [0-9]+\ [0-9]+\ ([0-9]+)$ ]]; then
      ((BASH_REMATCH[1] == 0)) || die "the load client counted errors while waiting for $what (see $name.log)"
      awk -v f="$fields" "BEGIN { split(f, v, \" \"); connected = v[1]; writing = v[2];
        resumed = v[3]; exit !($condition) }" && return
    fi
    kill -0 "$pid" 2>/dev/null || die "the load client exited while waiting for $what"
    ((SECONDS < deadline)) || die "waiting for $what: $(tail -n 1 "$WORK_DIR/$name.log")"
    sleep 0.05
  done
}

# reconnect_round VARIANT ROUND: two gateways, each beside its sidecar
# (write-through on one redis-server, or standalone with each other as
# --peers), RECONNECT_CLIENTS load clients spread over both; gateway A gets
# SIGTERM and drains (VARIANT drain, standalone) or not (no_drain). Sets
# RECONNECT_P50/P99 (close frame to welcome on B, ms), RECONNECT_LAST (A's
# SIGTERM to the last welcome, ms) and RECONNECT_READS (B's cache misses
# during the storm per resumed session; n/a standalone).
reconnect_round() {
  local variant=$1 round=$2 tag="reconnect-$1-$2" redis_port='' sidecar_a sidecar_b
  local -a sidecar_flags=(--peer-secret bench-peers) flags_a=() round_pids=()
  if [[ $variant != standalone ]]; then
    START_ON_CPU=$CLIENT_CPU start_redis_server redis_port "$tag-redis"
    round_pids+=("$LAST_PID")
    sidecar_flags+=(--upstream "redis://127.0.0.1:$redis_port" --registry-interval-ms 100)
  fi
  claim_port sidecar_a
  claim_port sidecar_b
  if [[ $variant == standalone ]]; then
    flags_a=(--peers "127.0.0.1:$sidecar_b")
  fi
  START_ON_CPU=$SERVER_CPU start_process "$tag-sidecar-b" "$SIDECAR_BIN" --listen "127.0.0.1:$sidecar_b" \
    --metrics-listen 127.0.0.1:0 --node-id sidecar-b "${sidecar_flags[@]}"
  local sidecar_b_pid=$LAST_PID
  round_pids+=("$LAST_PID")
  wait_for_ping "$tag-sidecar-b" "$sidecar_b_pid" "$sidecar_b"
  START_ON_CPU=$CLIENT_CPU start_process "$tag-sidecar-a" "$SIDECAR_BIN" --listen "127.0.0.1:$sidecar_a" \
    --metrics-listen 127.0.0.1:0 --node-id sidecar-a "${sidecar_flags[@]}" "${flags_a[@]}"
  local sidecar_a_pid=$LAST_PID
  round_pids+=("$LAST_PID")
  wait_for_ping "$tag-sidecar-a" "$sidecar_a_pid" "$sidecar_a"
  local deadline=$((SECONDS + START_TIMEOUT_SECONDS))
  until [[ $(cli "$sidecar_a" SESSION.NODES 2>/dev/null) == *sidecar-b* ]]; do
    ((SECONDS < deadline)) || die "sidecar-a never saw sidecar-b among its peers"
    sleep 0.05
  done

  local gateway_a gateway_b drain_ms=15000
  [[ $variant == no_drain ]] && drain_ms=0
  claim_port gateway_a
  claim_port gateway_b
  local -a gateway_flags=(--token-secret bench-tokens --max-connections "$((RECONNECT_CLIENTS + 100))")
  START_ON_CPU=$SERVER_CPU start_process "$tag-gateway-b" "$GATEWAY_BIN" --listen "127.0.0.1:$gateway_b" \
    --redis-url "redis://127.0.0.1:$sidecar_b" "${gateway_flags[@]}"
  round_pids+=("$LAST_PID")
  wait_for_line "$tag-gateway-b" "$LAST_PID" 'gateway listening'
  START_ON_CPU=$CLIENT_CPU start_process "$tag-gateway-a" "$GATEWAY_BIN" --listen "127.0.0.1:$gateway_a" \
    --redis-url "redis://127.0.0.1:$sidecar_a" "${gateway_flags[@]}" --drain-timeout-ms "$drain_ms" \
    --reconnect-url "ws://127.0.0.1:$gateway_b/?node={node}"
  local gateway_a_pid=$LAST_PID
  wait_for_line "$tag-gateway-a" "$gateway_a_pid" 'gateway listening'

  START_ON_CPU=$CLIENT_CPU start_process "$tag-load" "$GATEWAY_LOAD_BIN" --token-secret bench-tokens \
    --url "ws://127.0.0.1:$gateway_a/" --url "ws://127.0.0.1:$gateway_b/" \
    --clients "$RECONNECT_CLIENTS" --clients-per-user 4 --interval-ms 5000 --status-ms 20
  local load_pid=$LAST_PID
  wait_for_load "$tag-load" "$load_pid" "every client connected and writing" \
    "connected == $RECONNECT_CLIENTS && writing == $RECONNECT_CLIENTS"

  local misses_before=0 misses_after=0 sigterm_at displaced=$((RECONNECT_CLIENTS / 2))
  [[ $variant == standalone ]] || misses_before=$(info_field "$sidecar_b" upstream cache_misses)
  sigterm_at=$(date +%s%3N)
  kill -TERM "$gateway_a_pid"
  wait_for_load "$tag-load" "$load_pid" "gateway A's clients back on gateway B" \
    "resumed == $displaced && connected == $RECONNECT_CLIENTS"
  [[ $variant == standalone ]] || misses_after=$(info_field "$sidecar_b" upstream cache_misses)
  wait "$gateway_a_pid" || die "gateway A did not exit 0"
  kill -TERM "$load_pid"
  wait "$load_pid" || die "the load client did not exit 0"

  local last_back errors
  errors=$(load_field "$tag-load" summary errors)
  [[ $errors == 0 ]] || die "the load client counted $errors errors (see $tag-load.log)"
  RECONNECT_P50=$(load_field "$tag-load" summary reconnect_p50_ms)
  RECONNECT_P99=$(load_field "$tag-load" summary reconnect_p99_ms)
  last_back=$(load_field "$tag-load" summary last_back_at_ms)
  RECONNECT_LAST=$((last_back - sigterm_at))
  if [[ $variant == standalone ]]; then
    RECONNECT_READS=n/a
  else
    RECONNECT_READS=$(awk -v d="$((misses_after - misses_before))" -v n="$displaced" \
      'BEGIN { printf "%.3f", d / n }')
  fi
  # This round's servers go; the script's cleanup would stop them anyway.
  local pid
  for pid in "${round_pids[@]}"; do
    kill -TERM "$pid" 2>/dev/null || true
  done
  for pid in "${round_pids[@]}"; do
    wait "$pid" 2>/dev/null || true
  done
}

# The example gateway's shutdown under load: RECONNECT_CLIENTS WebSocket
# clients over two gateways, each beside its sidecar; one gateway gets
# SIGTERM and its half of the clients reconnects to the other and resumes.
# Variants: write-through with the gateway's SESSION.DRAIN, write-through
# without it (every resume reads its session through the upstream), and
# standalone (the drain alone carries the sessions). Gateway B and its
# sidecar, the pod that takes the storm, run on the server CPU; the load
# client, redis-server and the pod that shuts down on the other. Each client
# sends a message every 5 s (set, get, heartbeat in turn).
section_reconnect() {
  heading "Reconnect: $RECONNECT_CLIENTS WebSocket clients over two gateways, one gets SIGTERM"
  pinning_note
  build_gateway_examples
  ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
  local -a variants=(drain no_drain standalone)
  local -A p50 p99 last reads
  local variant round
  for variant in "${variants[@]}"; do p50[$variant]='' p99[$variant]='' last[$variant]='' reads[$variant]=''; done
  for ((round = 0; round < RECONNECT_ROUNDS; round++)); do
    for variant in "${variants[@]}"; do
      log "reconnect round $((round + 1))/$RECONNECT_ROUNDS: $variant"
      reconnect_round "$variant" "$round"
      p50[$variant]+=" $RECONNECT_P50" p99[$variant]+=" $RECONNECT_P99"
      last[$variant]+=" $RECONNECT_LAST" reads[$variant]+=" $RECONNECT_READS"
    done
  done

  local row='%-36s %8s %8s %14s %18s\n' label reads_drain reads_none
  # shellcheck disable=SC2059 # the format is the row layout above
  printf "\n$row" variant p50_ms p99_ms last_back_ms "upstream reads/resume"
  for variant in "${variants[@]}"; do
    case $variant in
      drain) label="write-through, SESSION.DRAIN" ;;
      no_drain) label="write-through, no drain" ;;
      standalone) label="standalone, SESSION.DRAIN" ;;
    esac
    local median_reads=n/a
    # shellcheck disable=SC2086 # space-separated numbers
    [[ $variant == standalone ]] || median_reads=$(median ${reads[$variant]})
    # shellcheck disable=SC2059,SC2086
    printf "$row" "$label" "$(median ${p50[$variant]})" "$(median ${p99[$variant]})" \
      "$(median ${last[$variant]})" "$median_reads"
  done
  printf '\np50, p99: a resumed client'"'"'s close frame (1012) to its welcome on the other gateway;\n'
  printf 'last_back: the SIGTERM to the last welcome; upstream reads: the other sidecar'"'"'s cache\n'
  printf 'misses during the storm per resumed session. Medians of %s rounds.\n' "$RECONNECT_ROUNDS"
  # shellcheck disable=SC2086
  reads_drain=$(median ${reads[drain]}) reads_none=$(median ${reads[no_drain]})
  # shellcheck disable=SC2086
  summary_row "reconnect: upstream reads/resume, drain / none" "" "$(ratio "$reads_drain" "$reads_none")" \
    "" "" "" "" "$reads_drain / $reads_none; last back $(median ${last[drain]}) / $(median ${last[no_drain]}) ms ($RECONNECT_ROUNDS rounds)"
}

main() {
  trap cleanup EXIT
  trap 'exit 130' INT
  trap 'exit 143' TERM

  check_setup
  setup_pinning
  build_sidecar
  local sections=${BENCH_SECTIONS:-memory reads passthrough write_through latency cluster migration idle_connections reconnect}
  local section own_servers_only=1
  for section in $sections; do
    [[ $section == migration || $section == reconnect ]] || own_servers_only=0
  done
  if ((own_servers_only)); then
    # Their own servers only: no prefill needed.
    for section in $sections; do "section_$section"; done
    print_summary
    return
  fi
  START_ON_CPU=$SERVER_CPU start_redis_server REDIS_PORT redis-server
  REDIS_PID=$LAST_PID
  # shellcheck disable=SC2086 # the extra flags are meant to be split
  START_ON_CPU=$SERVER_CPU start_sidecar SIDECAR_PORT sidecar ${BENCH_SIDECAR_ARGS:-}
  SIDECAR_PID=$LAST_PID
  prefill
  check_replies

  print_environment
  for section in $sections; do
    case $section in
      memory | reads | write_through | passthrough | latency | cluster | migration | idle_connections | reconnect) "section_$section" ;;
      *) die "unknown section in BENCH_SECTIONS: $section" ;;
    esac
  done
  print_summary
}

main "$@"
