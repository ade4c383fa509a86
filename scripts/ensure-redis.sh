#!/usr/bin/env bash
# Makes sure redis-server (7 or newer), redis-cli and redis-benchmark are
# installed, openssl (the TLS test makes its certificates with it), redis-py,
# which the Python client tests drive the sidecar with, and Node.js with
# ioredis and node-redis (tests/node, from its package-lock.json), which the
# Node client tests drive it with, and Go with redigo and go-redis (Debian's
# packages), which the Go client tests drive it with.
#
# The integration tests and the benchmark start their own redis-server on free
# ports, so on a fresh Debian machine this installs the packages with apt-get
# and stops the system service that the package may have started.
#
# redis-py goes into a virtual environment of the project's own
# (target/test-venv), never into the system's Python: Debian's python3
# refuses pip installs outside one (PEP 668). The tests run the redis-py
# checks with that environment's python.
set -euo pipefail

readonly REQUIRED_COMMANDS=(redis-server redis-cli redis-benchmark openssl python3)
readonly MIN_REDIS_MAJOR=7
VENV_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)/target/test-venv"
readonly VENV_DIR

log() { printf '==> %s\n' "$*" >&2; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

missing_commands() {
  local command
  for command in "${REQUIRED_COMMANDS[@]}"; do
    command -v "$command" >/dev/null 2>&1 || printf '%s ' "$command"
  done
}

# Runs a command as root: directly when we are root, otherwise through sudo
# (never prompting when there is no terminal to answer on, as in CI).
as_root() {
  if [[ $(id -u) -eq 0 ]]; then
    "$@"
  elif ! command -v sudo >/dev/null 2>&1; then
    die "not root and sudo is not available; run as root: $*"
  elif [[ -t 0 ]]; then
    sudo "$@"
  else
    sudo -n "$@"
  fi
}

# Debian's postinst starts redis-server as a system service on port 6379.
# Nothing here uses it, so stop it rather than leave a stray server behind.
stop_packaged_service() {
  local pid_file=/run/redis/redis-server.pid
  if command -v service >/dev/null 2>&1; then
    as_root service redis-server stop >/dev/null 2>&1 || true
  fi
  if [[ -s $pid_file ]]; then
    local pid
    pid=$(<"$pid_file")
    if [[ $pid =~ ^[0-9]+$ ]] && kill -0 "$pid" 2>/dev/null; then
      as_root kill "$pid" || true
    fi
  fi
}

# redis-py from PyPI, in the project's virtual environment, for the tests
# that check the contract as a Python user meets it.
ensure_redis_py() {
  if [[ -x $VENV_DIR/bin/python ]] && "$VENV_DIR/bin/python" -c 'import redis, yaml, hiredis' 2>/dev/null; then
    return 0
  fi
  if ! python3 -c 'import venv, ensurepip' 2>/dev/null; then
    command -v apt-get >/dev/null 2>&1 ||
      die "python3's venv module is missing; install it (Debian: python3-venv)"
    log "installing python3-venv"
    apt_install python3-venv
  fi
  log "installing redis-py (with hiredis) and PyYAML (the manifest check) into $VENV_DIR"
  rm -rf "$VENV_DIR"
  python3 -m venv "$VENV_DIR" || die "could not create a virtual environment at $VENV_DIR"
  "$VENV_DIR/bin/python" -m pip install --quiet --disable-pip-version-check 'redis>=5' hiredis pyyaml ||
    die "could not install redis-py and PyYAML with pip"
}

# ioredis and node-redis, the versions tests/node/package-lock.json pins,
# into tests/node/node_modules.
ensure_node_clients() {
  local dir
  dir="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)/tests/node"
  if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
    command -v apt-get >/dev/null 2>&1 || die "Node.js is missing; install node and npm (Node 18 or newer)"
    log "installing Node.js and npm"
    apt_install nodejs npm
  fi
  local major
  major=$(node -p 'process.versions.node.split(".")[0]')
  ((major >= 18)) || die "Node.js $(node --version) is too old: 18 or newer is required"
  if [[ -f $dir/node_modules/.package-lock.json ]] &&
    cmp -s "$dir/package-lock.json" "$dir/node_modules/.lock-installed" 2>/dev/null; then
    return 0
  fi
  log "installing ioredis and node-redis into $dir/node_modules"
  (cd "$dir" && npm ci --no-audit --no-fund --loglevel=error) || die "npm ci failed in $dir"
  cp "$dir/package-lock.json" "$dir/node_modules/.lock-installed"
}

# Go with redigo and go-redis from Debian's packages (tests/go, built in
# GOPATH mode: the Go module proxy may be out of reach).
ensure_go_clients() {
  if command -v go >/dev/null 2>&1 && [[ -d /usr/share/gocode/src/gopkg.in/redis.v5 ]] &&
    [[ -d /usr/share/gocode/src/github.com/gomodule/redigo ]]; then
    return 0
  fi
  command -v apt-get >/dev/null 2>&1 ||
    die "Go and its Redis clients are missing; install golang-go, golang-gopkg-redis.v5-dev and golang-github-gomodule-redigo-dev"
  log "installing Go, go-redis (v5) and redigo"
  apt_install golang-go golang-gopkg-redis.v5-dev golang-github-gomodule-redigo-dev
}

apt_install() {
  as_root env DEBIAN_FRONTEND=noninteractive apt-get update -q
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q "$@"
}

# The sidecar relies on Redis 7 (PEXPIREAT ... GT/NX, CLIENT TRACKING with
# BCAST, script flags): an older server fails the tests in confusing ways.
check_redis_version() {
  local version major
  version=$(redis-server --version | sed -n 's/.*v=\([0-9][0-9.]*\).*/\1/p')
  major=${version%%.*}
  [[ $major =~ ^[0-9]+$ ]] || die "cannot tell redis-server's version from: $(redis-server --version)"
  ((major >= MIN_REDIS_MAJOR)) ||
    die "redis-server $version is too old: Redis $MIN_REDIS_MAJOR or newer is required"
}

main() {
  local missing
  missing=$(missing_commands)
  if [[ -n $missing ]]; then
    command -v apt-get >/dev/null 2>&1 ||
      die "missing ${missing% }; install redis-server and redis-tools (Redis $MIN_REDIS_MAJOR or newer), openssl and python3"
    log "installing redis-server, redis-tools, redis-sentinel, openssl and python3 (missing: ${missing% })"
    apt_install redis-server redis-tools redis-sentinel openssl python3 python3-venv
    stop_packaged_service
    missing=$(missing_commands)
    [[ -z $missing ]] || die "still missing after installation: ${missing% }"
  fi
  check_redis_version
  ensure_redis_py
  ensure_node_clients
  ensure_go_clients
}

main "$@"
