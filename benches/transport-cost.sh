#!/usr/bin/env bash
# What the WebSocket fallback costs beside WebTransport (docs/BENCHMARKS.md, "WebSocket
# fallback"): the same `bench fanout`, every peer over WebTransport or every peer over the
# WebSocket, alternated in one run on this machine, ROUNDS times each. Prints one line per
# run: relay CPU per forwarded Gbit, the load generator's CPU, latency, delivery, RSS.
# Usage: benches/transport-cost.sh [SUBSCRIBERS...]   (default: 50 200)
set -euo pipefail
cd "$(dirname "$0")/.."
SIZES=("${@:-50 200}")
SYNAPSE=${SYNAPSE:-target/release/synapse-sfu}
DURATION=${DURATION:-10}
ROUNDS=${ROUNDS:-3}
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
for n in ${SIZES[@]}; do
    for round in $(seq "$ROUNDS"); do
        for transport in wt ws; do
            "$SYNAPSE" bench fanout --subscribers "$n" --duration "${DURATION}s" --no-baselines \
                --transport "$transport" --json --quiet >"$WORK/r.json"
            python3 - "$n" "$round" "$transport" "$WORK/r.json" <<'EOF'
import json, sys
n, round_, transport, path = sys.argv[1:]
r = json.load(open(path))["paths"]["relay"]
lat = r["latency_ms"]
print(f"N={n} round={round_} {transport}: relay {r.get('cpu_core_s_per_gbit')} core-s/Gbit, "
      f"relay {r.get('cpu_core_s_per_s')} cores, load generator {r.get('load_generator_cpu_core_s_per_s')} cores, "
      f"p50 {lat['p50']} ms p99 {lat['p99']} ms, delivered {r['delivered_ratio']}, "
      f"RSS {r.get('peak_rss_mb')} MB, egress {r['egress_mbps']} Mbit/s")
EOF
        done
    done
done
