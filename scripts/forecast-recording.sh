#!/usr/bin/env bash
# Record mqflux's own traffic as a forecasting test series: data/forecast/mqflux-traffic.csv.
#
#   scripts/forecast-recording.sh [--cycles N] [--out FILE]
#
# - Starts a private influxd (Debian's /usr/bin/influxd, free 127.0.0.1 ports, temp dir) and a
#   release mqflux with `[sink] self_metrics` every second into it.
# - Drives mqflux with mqflux-bench `latency` (one publisher, one subscriber, QoS 0, 64-byte
#   payloads) at a rate schedule shaped like a working day compressed into 60 s: twelve 5 s
#   slices (night low, morning ramp, midday peak, evening shoulder), times a factor per cycle
#   (cycles 6 and 7 are a quieter "weekend"), times seeded noise of +-15%. The slices start on a
#   fixed 5 s grid, so one cycle is exactly 60 steps of 1 s.
# - Reads the broker's own `messages_per_min` (kind=broker) back from influxd at 1 s steps and
#   writes it as CSV with `# step: 1` and `# seasons: 60`.
# Bounded: N cycles of 60 s (default 7: about 7.5 minutes), every tool run has a timeout, and
# both servers are stopped on exit (trap).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
CYCLES=7
OUT=$ROOT/data/forecast/mqflux-traffic.csv
while [ $# -gt 0 ]; do
    case "$1" in
        --cycles) CYCLES="$2"; shift ;;
        --out) OUT="$2"; shift ;;
        -h|--help) sed -n '2,/^set -e/p' "$0" | sed 's/^# \{0,1\}//; /^set -e/d'; exit 0 ;;
        *) echo "forecast-recording.sh: unknown argument $1 (try --help)" >&2; exit 2 ;;
    esac
    shift
done
log() { printf '[recording] %s\n' "$*" >&2; }

cargo build --release --quiet --bin mqflux --bin mqflux-bench
MQFLUX=$ROOT/target/release/mqflux
BENCH=$ROOT/target/release/mqflux-bench
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

TMP=$(mktemp -d)
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$TMP"; }
trap cleanup EXIT

HTTP=$(free_port); RPC=$(free_port); MQTT=$(free_port)
cat > "$TMP/influxdb.conf" <<CONF
reporting-enabled = false
bind-address = "127.0.0.1:$RPC"
[meta]
  dir = "$TMP/meta"
[data]
  dir = "$TMP/data"
  wal-dir = "$TMP/wal"
  query-log-enabled = false
[monitor]
  store-enabled = false
[http]
  bind-address = "127.0.0.1:$HTTP"
  log-enabled = false
[logging]
  level = "error"
CONF
/usr/bin/influxd -config "$TMP/influxdb.conf" > "$TMP/influxd.log" 2>&1 &
PIDS+=($!)
for _ in $(seq 100); do curl -sf "http://127.0.0.1:$HTTP/ping" >/dev/null && break; sleep 0.2; done

cat > "$TMP/mqflux.toml" <<CONF
sys_interval = 0
[[listeners]]
bind = "127.0.0.1"
port = $MQTT
[sink]
enabled = true
url = "http://127.0.0.1:$HTTP"
database = "recording"
spool_dir = "$TMP/spool"
self_metrics = true
self_metrics_interval_secs = 1
CONF
"$MQFLUX" --config "$TMP/mqflux.toml" > "$TMP/mqflux.log" 2>&1 &
PIDS+=($!)
for _ in $(seq 100); do grep -q ready "$TMP/mqflux.log" && break; sleep 0.1; done
grep -q ready "$TMP/mqflux.log" || { cat "$TMP/mqflux.log" >&2; exit 1; }

# Share of the peak rate per 5 s slice of a "day", and a factor per cycle ("day of week").
PROFILE=(0.15 0.10 0.10 0.25 0.60 0.95 1.00 0.90 0.85 0.60 0.40 0.25)
DAYS=(1.00 1.05 0.95 1.10 1.00 0.50 0.45)
PEAK=1500
RANDOM=42
START=$(date +%s)
log "recording $CYCLES cycles of 60 s from $(date -u +%H:%M:%S), port $MQTT"
for ((c = 0; c < CYCLES; c++)); do
    for ((s = 0; s < 12; s++)); do
        noise=$(( RANDOM % 31 - 15 ))
        rate=$(python3 -c "print(max(5, round($PEAK * ${PROFILE[$s]} * ${DAYS[$((c % 7))]} * (1 + $noise / 100))))")
        slot=$(( START + (c * 12 + s) * 5 ))
        while [ "$(date +%s)" -lt "$slot" ]; do sleep 0.05; done
        timeout 20 "$BENCH" latency --port "$MQTT" --rate "$rate" --duration 4.6 --qos 0 \
            --drain-timeout 0.3 --label recording >/dev/null 2>>"$TMP/bench.err" || log "bench slice failed (see below)"
    done
    log "cycle $((c + 1))/$CYCLES done"
done
sleep 3
Q="SELECT mean(\"messages_per_min\") FROM \"mqflux_self\" WHERE \"kind\" = 'broker' AND time >= ${START}s AND time < $(( START + CYCLES * 60 ))s GROUP BY time(1s) fill(none)"
curl -sf -G "http://127.0.0.1:$HTTP/query" --data-urlencode "db=recording" --data-urlencode "epoch=s" \
    --data-urlencode "q=$Q" > "$TMP/answer.json"
python3 - "$TMP/answer.json" "$OUT" "$CYCLES" <<'PY'
import json, sys
rows = json.load(open(sys.argv[1]))["results"][0]["series"][0]["values"]
with open(sys.argv[2], "w") as f:
    f.write("# mqflux's own PUBLISH rate (messages per minute, kind=broker) under mqflux-bench load\n")
    f.write(f"# made by scripts/forecast-recording.sh: {sys.argv[3]} cycles of a day-shaped schedule compressed into 60 s\n")
    f.write("# step: 1\n# seasons: 60\ntime,value\n")
    for t, v in rows:
        if v is not None:
            f.write(f"{t},{v}\n")
print(f"{len(rows)} points -> {sys.argv[2]}", file=sys.stderr)
PY
