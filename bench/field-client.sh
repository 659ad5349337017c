#!/usr/bin/env bash
# field-client benchmarks (bench/RESULTS.md, "field-client: encode CPU and glass-to-glass"):
#  1. CPU of `field-client run --source test --no-audio` per published stream, by capture size and
#     link class (wifi: three simulcast layers; satellite: one layer), over a 20 s window after
#     10 s of warm-up, from /proc/PID/stat (user + system time of the whole process: capture,
#     encoders, WebRTC).
#  2. Glass-to-glass latency on loopback: `run --source test` paints the capture time into every
#     frame (field_client::media::timecode); `field-client watch --layer high` decodes and reads it
#     back. p50/p95 from watch's summary (every frame after the first 2.5 s, 30 s run).
# Usage: bash bench/field-client.sh [SECONDS]   (run from the repository root; builds release)
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-20}
cargo build --release -q -p media-server -p field-client --bins
bin=target/release
work=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$work"' EXIT

"$bin/media-server" --data "$work/data" --http 127.0.0.1:0 --media 127.0.0.1:0 --quic 127.0.0.1:0 \
  >"$work/node.out" 2>"$work/node.log" &
for _ in $(seq 100); do grep -q '^ready ' "$work/node.out" && break; sleep 0.1; done
quic=$(grep -o 'quic=[^ ]*' "$work/node.out" | head -1 | cut -d= -f2)
[ -n "$quic" ] || { echo "no quic address in: $(cat "$work/node.out")" >&2; exit 1; }
officer=$("$bin/media-server" token --data "$work/data" --sub off-bench --role officer)
viewer=$("$bin/media-server" token --data "$work/data" --sub bench-viewer --role viewer)
hz=$(getconf CLK_TCK)

cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }

echo "date: $(date -u '+%Y-%m-%d %H:%M UTC'); load: $(cut -d' ' -f1-3 /proc/loadavg); $(nproc) CPUs"
echo "| capture | link | layers | CPU % of one core | watch fps (high) | latency p50 ms | latency p95 ms |"
echo "|---|---|---|---:|---:|---:|---:|"
for case in "640x480@30 wifi" "1280x720@30 wifi" "1280x720@30 satellite" "640x480@30 satellite"; do
  set -- $case
  "$bin/field-client" run --json --source test --no-audio --video "$1" --link "$2" \
    --node "$quic" --token "$officer" >"$work/run.out" 2>"$work/run.err" &
  pid=$!
  for _ in $(seq 100); do grep -q '"publishing"' "$work/run.out" && break; sleep 0.1; done
  layers=$(grep -o '"layers":\[[^]]*\]' "$work/run.out" | head -1 | sed 's/"layers"://')
  # Warm up: congestion control ramps to the full set of layers.
  sleep 10
  t0=$(cpu_ticks $pid)
  "$bin/field-client" watch off-bench --layer high --seconds "$secs" --json --node "$quic" --token "$viewer" \
    >"$work/watch.out" 2>"$work/watch.err" || true
  t1=$(cpu_ticks $pid)
  cpu=$(awk -v a="$t0" -v b="$t1" -v hz="$hz" -v s="$secs" 'BEGIN{printf "%.1f", (b-a)/hz/s*100}')
  fps=$(grep '"kind":"watch"' "$work/watch.out" | tail -n +3 | grep -o '"fps":[0-9]*' | cut -d: -f2 \
    | awk '{s+=$1; n++} END{if(n) printf "%.1f", s/n; else print "-"}')
  p50=$(grep -o '"latency_p50_ms":[0-9null]*' "$work/watch.out" | cut -d: -f2)
  p95=$(grep -o '"latency_p95_ms":[0-9null]*' "$work/watch.out" | cut -d: -f2)
  echo "| $1 | $2 | $layers | $cpu | $fps | ${p50:--} | ${p95:--} |"
  kill "$pid"; wait "$pid" 2>/dev/null || true
done
