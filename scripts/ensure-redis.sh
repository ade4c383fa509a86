#!/usr/bin/env bash
# Makes sure redis-server, redis-cli and redis-benchmark are installed,
# openssl (the TLS test makes its certificates with it), and redis-py, which
# the Python client test drives the sidecar with.
#
# The integration tests and the benchmark start their own redis-server on free
# ports, so on a fresh Debian machine this installs the packages with apt-get
# and stops the system service that the package may have started.
set -euo pipefail

readonly REQUIRED_COMMANDS=(redis-server redis-cli redis-benchmark openssl)

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

# redis-py from PyPI, for the test that checks the contract as a Python user
# meets it.
ensure_redis_py() {
  command -v python3 >/dev/null 2>&1 || die "python3 is required (for the redis-py test)"
  python3 -c 'import redis' 2>/dev/null && return 0
  log "installing redis-py"
  local user_flag=()
  [[ $(id -u) -eq 0 ]] || user_flag=(--user)
  python3 -m pip install --quiet --disable-pip-version-check "${user_flag[@]}" 'redis>=5' ||
    die "could not install redis-py with pip"
}

main() {
  ensure_redis_py
  local missing
  missing=$(missing_commands)
  if [[ -z $missing ]]; then
    return 0
  fi
  command -v apt-get >/dev/null 2>&1 ||
    die "missing ${missing% }; install redis-server and redis-tools (Redis 7 or newer)"

  log "installing redis-server, redis-tools and openssl (missing: ${missing% })"
  as_root env DEBIAN_FRONTEND=noninteractive apt-get update -q
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q redis-server redis-tools openssl
  stop_packaged_service

  missing=$(missing_commands)
  [[ -z $missing ]] || die "still missing after installation: ${missing% }"
}

main "$@"
