#!/usr/bin/env bash
# The weak-link comparison of docs/BENCHMARKS.md in one run: a "before" relay binary and
# this one, and this one with each congestion controller, on the three impaired links,
# then the clean 1→500 fan-out (relay CPU per forwarded gigabit), two rounds.
# Usage: benches/weak-link.sh OLD_RELAY_BINARY [SECONDS]
set -euo pipefail
cd "$(dirname "$0")/.."
OLD=${1:?usage: benches/weak-link.sh OLD_RELAY_BINARY [SECONDS]}
SECONDS_PER_RUN=${2:-20}
cargo build --release --quiet
NEW=$PWD/target/release/synapse-sfu
run() { echo "=== $1"; shift; "$NEW" bench "$@" --quiet; }
for link in "--down-kbps 700 --down-queue 200ms" "--loss 0.03 --delay 40ms --jitter 10ms" "--up-kbps 700 --up-queue 200ms"; do
    # shellcheck disable=SC2086
    {
        run "before: $link" weak-link $link --duration "${SECONDS_PER_RUN}s" --relay-bin "$OLD"
        run "after (default): $link" weak-link $link --duration "${SECONDS_PER_RUN}s" --relay-bin "$NEW"
        for cc in cubic new-reno; do
            run "after, $cc: $link" weak-link $link --duration "${SECONDS_PER_RUN}s" --relay-bin "$NEW" \
                --relay-args "--congestion-controller $cc"
        done
    }
done
for round in 1 2; do
    run "fanout 500 before ($round)" fanout --subscribers 500 --duration 10s --no-baselines --relay-bin "$OLD"
    run "fanout 500 after ($round)" fanout --subscribers 500 --duration 10s --no-baselines --relay-bin "$NEW"
    run "fanout 500 after, cubic ($round)" fanout --subscribers 500 --duration 10s --no-baselines --relay-bin "$NEW" \
        --relay-args "--congestion-controller cubic"
done
