#!/usr/bin/env bash
# The one test command (README, .ci/run): installs what a fresh machine lacks, then runs
# every test. Safe to run again: installed pieces are skipped.
set -euo pipefail
cd "$(dirname "$0")/.."

# Each phase is announced with the minutes the run has taken so far: the whole run has a
# 30-minute budget on a 2-core machine, and the log shows where it went.
phase() { printf '== [%d:%02d] %s\n' $((SECONDS / 60)) $((SECONDS % 60)) "$1"; }

phase "setup: Chromium, Firefox ESR and redis-server (Debian packages) and the browser tests' npm packages"
missing=()
command -v chromium >/dev/null 2>&1 || missing+=(chromium)
command -v firefox-esr >/dev/null 2>&1 || missing+=(firefox-esr)
# The cluster tests (tests/cluster.rs) start redis-servers of their own.
command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
if [ ${#missing[@]} -gt 0 ]; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq "${missing[@]}" >/dev/null
fi
chromium --version
firefox-esr --version
redis-server --version
# The committed lockfile, exactly; playwright-core drives the system Chromium and
# puppeteer-core the system Firefox (WebDriver BiDi); neither downloads a browser.
PUPPETEER_SKIP_DOWNLOAD=1 npm ci --prefix tests/browser --no-audit --no-fund

phase "checks: formatting and lints"
cargo fmt --check
cargo clippy --all-targets --locked -- -D warnings

phase "tests: unit, native end-to-end (real QUIC on 127.0.0.1), CLI, bench smoke"
cargo test --locked

phase "fuzz: every decoder of untrusted bytes and the core, ${FUZZ_SECONDS:-20} s each"
# cargo fuzz (libFuzzer + AddressSanitizer) wants nightly flags; RUSTC_BOOTSTRAP lets this
# machine's one stable toolchain take them. New inputs go to a scratch corpus; the seeds in
# fuzz/corpus stay as committed. A crash fails the run and leaves its input in
# fuzz/artifacts/.
if ! cargo fuzz --version >/dev/null 2>&1; then
    cargo install cargo-fuzz --locked --quiet
fi
scratch=$(mktemp -d)
for target in control_message datagram stream relay_core; do
    mkdir -p "$scratch/$target"
    log="$scratch/$target.log"
    if ! RUSTC_BOOTSTRAP=1 cargo fuzz run --fuzz-dir fuzz "$target" "$scratch/$target" "fuzz/corpus/$target" -- \
        -max_total_time="${FUZZ_SECONDS:-20}" -rss_limit_mb=2048 -print_final_stats=1 >"$log" 2>&1; then
        tail -n 60 "$log"
        echo "fuzz target $target failed"
        exit 1
    fi
    echo "$target: $(grep -E '^stat::(number_of_executed_units|new_units_added)' "$log" | tr '\n' ' ')"
done
rm -rf "$scratch"

phase "tests: headless Chromium and Firefox pages in calls through the relay (each browser alone, and mixed), and one behind a shaped uplink"
# Uses the relay binary cargo test just built, with the web client embedded in it.
SYNAPSE_BIN="$PWD/target/debug/synapse-sfu" node --test tests/browser/
phase "done"
