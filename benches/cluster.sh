#!/usr/bin/env bash
# What a room spanning relays costs (docs/BENCHMARKS.md, "A room across relays"): one
# publisher to N subscribers, on one relay (`bench fanout`) and spread over three relays
# that span the room (`bench cluster`, publisher on relay 1), alternated in one run on this
# machine, ROUNDS times each. Prints one line per run: latency, delivery, CPU and RSS per
# relay, and what the hop through the origin adds (edge subscribers beside the origin's).
# Usage: benches/cluster.sh [SUBSCRIBERS...]   (default: 150 300). Needs redis-server.
set -euo pipefail
cd "$(dirname "$0")/.."
SIZES=("${@:-150 300}")
SYNAPSE=${SYNAPSE:-target/release/synapse-sfu}
DURATION=${DURATION:-10}
ROUNDS=${ROUNDS:-2}
RELAYS=${RELAYS:-3}
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
for n in ${SIZES[@]}; do
    for round in $(seq "$ROUNDS"); do
        "$SYNAPSE" bench fanout --subscribers "$n" --duration "${DURATION}s" --no-baselines \
            --json --quiet >"$WORK/one.json"
        "$SYNAPSE" bench cluster --subscribers "$n" --relays "$RELAYS" --duration "${DURATION}s" \
            --json --quiet >"$WORK/cluster.json"
        python3 - "$n" "$round" "$WORK/one.json" "$WORK/cluster.json" <<'PY'
import json, sys
n, round_, one, cluster = sys.argv[1:]
r = json.load(open(one))["paths"]["relay"]
lat = r["latency_ms"]
print(f"N={n} round={round_} one relay: p50 {lat['p50']} ms p99 {lat['p99']} ms, "
      f"delivered {r['delivered_ratio']}, relay {r.get('cpu_core_s_per_s')} cores, "
      f"{r.get('cpu_core_s_per_gbit')} core-s/Gbit, RSS {r.get('peak_rss_mb')} MB, "
      f"load generator {r.get('load_generator_cpu_core_s_per_s')} cores")
c = json.load(open(cluster))
for i, relay in enumerate(c["per_relay"]):
    lat = relay["latency_ms"]
    print(f"N={n} round={round_} cluster relay {i + 1} ({relay['role']}, {relay['subscribers']} subs): "
          f"p50 {lat['p50']} ms p99 {lat['p99']} ms, delivered {relay['delivered_ratio']}, "
          f"{relay.get('cpu_core_s_per_s')} cores, {relay.get('cpu_core_s_per_gbit')} core-s/Gbit, "
          f"RSS {relay.get('peak_rss_mb')} MB, pulls {relay.get('pulled_producers')}")
print(f"N={n} round={round_} cluster: delivered {c['delivered_ratio']}, hop adds p50 "
      f"{c['hop_added_p50_ms']} ms p99 {c['hop_added_p99_ms']} ms, load generator "
      f"{c.get('load_generator_cpu_core_s_per_s')} cores")
PY
    done
done
