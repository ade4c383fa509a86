#!/usr/bin/env bash
# Runs the cargo-fuzz targets under fuzz/ (the client request parser, the
# upstream reply scanner, the peers' session payload decoder) for a bounded
# time each, when a nightly toolchain is present (cargo fuzz needs one);
# installs cargo-fuzz if it is missing. A crash fails the run and leaves its
# input under fuzz/artifacts/.
#
# Environment: FUZZ_SECONDS per target (default 20).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

log() { printf '==> %s\n' "$*" >&2; }

if ! cargo +nightly --version >/dev/null 2>&1; then
  log "no nightly toolchain: fuzzing skipped (the proptest equivalents ran with the tests)"
  exit 0
fi
if ! cargo fuzz --version >/dev/null 2>&1; then
  log "installing cargo-fuzz"
  cargo install cargo-fuzz --locked --quiet
fi
seconds=${FUZZ_SECONDS:-20}
for target in request_parser reply_scanner peer_payload; do
  log "cargo fuzz run $target for ${seconds}s"
  cargo +nightly fuzz run "$target" -- -max_total_time="$seconds"
done
