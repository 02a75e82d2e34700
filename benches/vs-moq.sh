#!/usr/bin/env bash
# Synapse vs moq-relay, 1 -> N fan-out of one ~1 Mbit/s video track, alternated in one run
# on this machine (docs/BENCHMARKS.md, "Core reshape").
#
#   benches/vs-moq.sh MOQ_TARGET_DIR [N...]
#
# MOQ_TARGET_DIR holds moq-relay and moq-bench, built from a moq-dev/moq checkout with
#   cargo build --release -p moq-relay -p moq-bench
# Synapse runs its own `bench fanout --no-baselines` twice a round: video only
# (`--audio-bitrate 0`, moq-bench's workload: one 1 Mbit/s track at 30 fps, groups of 60;
# Synapse's frames vary in size as an encoder's, keyframes ten times a delta) and, as
# "synapse+audio", with its default 48 kbit/s of audio datagrams besides. moq-relay is driven by moq-bench: one publisher connection (30 fps,
# 4,166-byte frames, groups of 60) and one process of N subscriber connections. For both,
# the relay's CPU is read from /proc over the steady window and divided by the bytes the
# subscribers received in it. Prints one line per run and writes JSON lines to
# $OUT (default vs-moq.jsonl).
set -euo pipefail
MOQ=${1:?usage: benches/vs-moq.sh MOQ_TARGET_DIR [N...]}
shift
SIZES=("${@:-200 400}")
SYNAPSE=${SYNAPSE:-target/release/synapse-sfu}
DURATION=${DURATION:-10}
ROUNDS=${ROUNDS:-2}
OUT=${OUT:-vs-moq.jsonl}
WORK=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$WORK"' EXIT

cpu_seconds() { # utime + stime of a process, in seconds
    awk '{ print ($14 + $15) / 100 }' "/proc/$1/stat"
}
rss_mb() {
    awk '/VmHWM/ { print $2 / 1024 }' "/proc/$1/status"
}

synapse() { # N AUDIO_BITRATE LABEL
    local n=$1
    "$SYNAPSE" bench fanout --subscribers "$n" --duration "${DURATION}s" --no-baselines \
        --audio-bitrate "$2" --json --quiet >"$WORK/s.json" 2>"$WORK/s.err"
    python3 - "$n" "$WORK/s.json" "$3" <<'EOF'
import json, sys
n = int(sys.argv[1]); r = json.load(open(sys.argv[2]))["paths"]["relay"]
gbit = r["egress_mbps"] / 1000
line = {"relay": sys.argv[3], "n": n, "delivered": r["delivered_ratio"],
        "gbit_per_s": round(gbit, 4), "cpu": r["cpu_core_s_per_s"],
        "core_s_per_gbit": r["cpu_core_s_per_gbit"],
        "gbit_per_core": round(gbit / r["cpu_core_s_per_s"], 3),
        "rss_mb": r["peak_rss_mb"], "p50_ms": r["latency_ms"]["p50"],
        "p99_ms": r["latency_ms"]["p99"],
        "load_generator_cpu": r.get("load_generator_cpu_core_s_per_s")}
print(json.dumps(line))
EOF
}

moq() {
    local n=$1 port=$((4600 + RANDOM % 300))
    cat >"$WORK/relay.toml" <<EOF
[log]
level = "warn"
[server]
listen = "127.0.0.1:$port"
tls.generate = ["localhost"]
[auth]
public = ""
EOF
    "$MOQ/moq-relay" "$WORK/relay.toml" >"$WORK/relay.log" 2>&1 &
    local relay=$!
    sleep 1
    local url="https://localhost:$port/"
    local common=(--client-connect "$url" --client-tls-disable-verify --name bench
        --report 1s --log-level warn)
    "$MOQ/moq-bench" "${common[@]}" --connections 1 --broadcasts 1 --subscribe 0 --fps 30 \
        --frame-size 4166 --group-size 59 --startup 0s --duration $((DURATION + 12))s \
        >"$WORK/pub.log" 2>&1 &
    local publisher=$!
    sleep 1
    "$MOQ/moq-bench" "${common[@]}" --connections "$n" --broadcasts 0 --subscribe 1 \
        --fps 0 --startup 3s --duration $((DURATION + 9))s --output "$WORK/sub.jsonl" \
        >"$WORK/sub.log" 2>&1 &
    local subscribers=$!
    # Ramp: connections over 3 s, then a window to discover the broadcast and subscribe.
    sleep 7
    local lines0 cpu0 cpu1
    lines0=$(wc -l <"$WORK/sub.jsonl")
    cpu0=$(cpu_seconds $relay)
    local t0=$SECONDS
    sleep "$DURATION"
    cpu1=$(cpu_seconds $relay)
    local elapsed=$((SECONDS - t0))
    local lines1
    lines1=$(wc -l <"$WORK/sub.jsonl")
    local rss
    rss=$(rss_mb $relay)
    wait $subscribers || true
    kill $publisher $relay 2>/dev/null || true
    wait $publisher $relay 2>/dev/null || true
    python3 - "$n" "$WORK/sub.jsonl" "$lines0" "$lines1" "$cpu0" "$cpu1" "$elapsed" "$rss" <<'EOF'
import json, sys
n = int(sys.argv[1]); rows = [json.loads(l) for l in open(sys.argv[2])]
a, b = int(sys.argv[3]), int(sys.argv[4])
first, last = rows[max(a - 1, 0)], rows[b - 1]
secs = (last["timestamp_ms"] - first["timestamp_ms"]) / 1000
gbit = (last["bytes_recv"] - first["bytes_recv"]) * 8 / 1e9
frames = last["frames_recv"] - first["frames_recv"]
cpu = (float(sys.argv[6]) - float(sys.argv[5])) / float(sys.argv[7])
lost = last["groups_expected"] - last["groups_present"]
line = {"relay": "moq-relay", "n": n, "frames_per_subscriber_per_s": round(frames / secs / n, 2),
        "delivered": round(frames / secs / n / 30, 4),
        "gbit_per_s": round(gbit / secs, 4), "cpu": round(cpu, 3),
        "core_s_per_gbit": round(cpu / (gbit / secs), 3) if gbit else None,
        "gbit_per_core": round(gbit / secs / cpu, 3) if cpu else None,
        "rss_mb": float(sys.argv[8]), "lost_groups": lost,
        "subscriptions": last["subscriptions"]}
print(json.dumps(line))
EOF
}

: >"$OUT"
for round in $(seq "$ROUNDS"); do
    for n in ${SIZES[@]}; do
        synapse "$n" 0 synapse | tee -a "$OUT"
        moq "$n" | tee -a "$OUT"
        synapse "$n" 48000 synapse+audio | tee -a "$OUT"
    done
done
