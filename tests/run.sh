#!/usr/bin/env bash
# The one test command (README, .ci/run): installs what a fresh machine lacks, then runs
# every test. Safe to run again: installed pieces are skipped.
set -euo pipefail
cd "$(dirname "$0")/.."

echo "== setup: Chromium (Debian package) and the browser tests' npm packages"
if ! command -v chromium >/dev/null 2>&1; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq chromium >/dev/null
fi
chromium --version
# The committed lockfile, exactly; playwright-core drives the system Chromium and
# downloads no browser of its own.
npm ci --prefix tests/browser --no-audit --no-fund

echo "== checks: formatting and lints"
cargo fmt --check
cargo clippy --all-targets --locked -- -D warnings

echo "== tests: unit, native end-to-end (real QUIC on 127.0.0.1), CLI, bench smoke"
cargo test --locked

echo "== tests: three headless Chromium pages in a call through the relay"
# Uses the relay binary cargo test just built, with the web client embedded in it.
SYNAPSE_BIN="$PWD/target/debug/synapse-sfu" node --test tests/browser/
