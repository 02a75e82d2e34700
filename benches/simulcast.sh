#!/usr/bin/env bash
# The simulcast comparison of docs/BENCHMARKS.md in one run, one binary:
# - a subscriber on a 700 kbit/s link (200 ms queue): one encoding vs three layers;
# - the same with the limit lifted after 15 s (time back on the top layer);
# - a 10-person meeting: one encoding, three layers at full preference, and three layers
#   with every consumer at 320x180 (relay egress, publishers' uplink, unused layers).
# Usage: benches/simulcast.sh [SECONDS]
set -euo pipefail
cd "$(dirname "$0")/.."
SECONDS_PER_RUN=${1:-30}
cargo build --release --quiet
BIN=$PWD/target/release/synapse-sfu
run() { echo "=== $1"; shift; "$BIN" bench "$@" --quiet; }
link="--down-kbps 700 --down-queue 200ms"
# shellcheck disable=SC2086
{
    run "700 kbit/s subscriber, one encoding" weak-link $link --duration "${SECONDS_PER_RUN}s"
    run "700 kbit/s subscriber, simulcast" weak-link $link --simulcast --duration "${SECONDS_PER_RUN}s"
    run "700 kbit/s subscriber, simulcast, limit lifted at 15 s" weak-link $link --simulcast \
        --lift-after 15s --duration "$((SECONDS_PER_RUN + 5))s"
}
run "meeting of 10, one encoding" meeting --peers 10 --duration "${SECONDS_PER_RUN}s"
run "meeting of 10, simulcast, full preference" meeting --peers 10 --simulcast --duration "${SECONDS_PER_RUN}s"
run "meeting of 10, simulcast, every consumer at 320x180" meeting --peers 10 --thumbnails --duration "${SECONDS_PER_RUN}s"
