#!/usr/bin/env bash
# The project's one test command: formatting, lints, build, then the test
# suite. Extra arguments go to the test runner (cargo nextest run when
# installed, cargo test otherwise), e.g. `scripts/test.sh maxperuser` runs the
# tests whose names contain it.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

log() { printf '==> %s\n' "$*" >&2; }

has_cargo_subcommand() {
  cargo "$1" --version >/dev/null 2>&1
}

main() {
  # The integration tests start their own redis-server processes.
  bash scripts/ensure-redis.sh

  if has_cargo_subcommand fmt; then
    log "cargo fmt --check"
    cargo fmt --check
  else
    log "rustfmt is not installed; skipping the format check"
  fi

  if has_cargo_subcommand clippy; then
    log "cargo clippy --all-targets -- -D warnings"
    cargo clippy --all-targets -- -D warnings
  else
    log "clippy is not installed; skipping the lints"
  fi

  log "cargo build"
  cargo build
  # tests/gateway_drain.rs runs the example gateway and its load client as
  # processes; cargo names binaries to tests (CARGO_BIN_EXE_*), not
  # examples, so they are built here, before the tests look for them (the
  # runner builds them too when no test target is named).
  log "cargo build --examples"
  cargo build --examples

  # In CI, report every failing test rather than stop at the first one.
  local runner_args=("$@")
  if [[ ${CI:-} == true ]]; then
    runner_args=(--no-fail-fast "${runner_args[@]}")
  fi

  # The suites that talk to one redis-server run again with 256 shards (the
  # default on a cluster, where the cluster suite runs with it): every
  # cross-shard step, intent and lock then runs on a single server too.
  local upstream_suites=(--test write_through --test migration --test fleet --test tls)

  if has_cargo_subcommand nextest; then
    log "cargo nextest run ${runner_args[*]}"
    local status=0
    cargo nextest run "${runner_args[@]}" || status=$?
    if ((status == 4)); then
      # nextest's code for "no test matched the filter".
      printf 'error: no test name matches %s\n' "$*" >&2
      exit 4
    fi
    ((status == 0)) || exit "$status"
    if [[ $# -eq 0 ]]; then
      log "SIDECAR_TEST_SHARDS=256 cargo nextest run ${upstream_suites[*]}"
      SIDECAR_TEST_SHARDS=256 cargo nextest run "${runner_args[@]}" "${upstream_suites[@]}"
    fi
    # nextest does not run doctests; cargo test does, for library crates only.
    if [[ $# -eq 0 && -f src/lib.rs ]]; then
      log "cargo test --doc"
      cargo test --doc
    fi
  else
    log "cargo test ${runner_args[*]}"
    cargo test "${runner_args[@]}"
    if [[ $# -eq 0 ]]; then
      log "SIDECAR_TEST_SHARDS=256 cargo test ${upstream_suites[*]}"
      SIDECAR_TEST_SHARDS=256 cargo test "${upstream_suites[@]}"
    fi
  fi
}

main "$@"
