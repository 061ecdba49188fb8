#!/usr/bin/env bash
# Side-by-side benchmark: the same mqflux-bench scenarios against Debian's mosquitto and against
# mqflux, in one run, then a table with ratios (mqflux / mosquitto).
#
#   scripts/bench.sh [--quick] [--only NAME[,NAME..]] [--duration SECS] [--latency-rounds N]
#                    [--out DIR] [--no-build] [--install-rumqttd] [--dashboard] [--no-forecast]
#
# - --dashboard: a second mqflux with the web dashboard on (`[dashboard]`) and a dashboard
#   "open" on it the whole time: a Server-Sent Events client on /api/v1/events and a poller
#   reading the overview, clients and topics every second, as the pages do. Every scenario also
#   runs on it (after plain mqflux), and a second table compares mqflux with the dashboard to
#   mqflux without (DIR/mqflux-dashboard.jsonl).
# - Installs Debian's mosquitto if it is missing (apt-get; needs root).
# - rumqttd (bytebeam's broker; it stops reading publishers while a subscriber is behind, so it
#   loses nothing in the open-loop fan-in) runs the fan-in scenarios as a third broker when it
#   is found: $RUMQTTD, on PATH, or in .tools/bin. --install-rumqttd installs it there first
#   (`cargo install rumqttd --root .tools`: a long build on 2 cores); without it a missing
#   rumqttd is skipped with a line saying so. Its table compares mqflux / rumqttd.
# - Starts both brokers on free loopback ports with comparable limits: 20 QoS 1/2 messages in
#   flight and 1000 queued per client, no persistence, no connection limit, mqflux's InfluxDB
#   sink disabled.
# - CPU pinning (when taskset exists and there are >= 2 CPUs): the load tool runs on CPU 0 and both
#   brokers on CPU 1, so the tool gets one core and the broker the other; set BENCH_NO_PIN=1 to
#   turn it off.
# - BENCH_NICE=-10 (as root) runs the brokers and the tool at that nice level. On a machine shared
#   with other work this keeps the comparison closer to an idle machine: the scheduler shares a
#   busy CPU per thread, which favours a many-threaded broker over single-threaded mosquitto.
# - Scenarios are interleaved (scenario 1 on mosquitto, then on mqflux, then scenario 2 ...), so
#   a change of background load on the machine hits both brokers alike. The connection-scale
#   scenario runs first, while both brokers are fresh (freed memory stays in the allocator and
#   would hide the per-connection cost).
# - Latency scenarios run as N alternating rounds (default 16, 2 with --quick; --latency-rounds)
#   of 3 s each (half the scenario duration if that is shorter), mosquitto first in odd rounds
#   and mqflux first in even ones; the table shows the median of the rounds and in how many
#   rounds each broker had the lower p99. On a VM the p99 of one run is set by whether the host
#   stalled the virtual CPUs in those seconds: an A/A test (two instances of the same broker, 30
#   rounds each) gave medians of two 6-round samples 0.81x-1.23x apart (5-95%), of 16 rounds
#   about 0.9x-1.1x, so one run per broker, or a few, decides nothing.
# - Bounded: about 8 minutes in full (10 s per scenario, 10,000 connections, then up to 20,000 as
#   the open-files limit allows; up to 8 when a broker
#   stalls or refuses connections, which the tool waits out for at most 5 s / 60 s), about
#   1.5 minutes with --quick (3 s per scenario, 2,000 connections); every tool run also has a
#   hard 3-minute timeout.
# - Bridges (scenarios "bridge ..."; `--only bridge` runs just these): a mosquitto and an mqflux
#   each bridge `mqflux-bench/#` out to a remote mqflux, through a relay in mqflux-bench
#   (`mqflux-bench bridge`): throughput through the bridge (4 publishers on the local broker,
#   QoS 1, 1 subscriber on the remote), then the backlog drain: the relay cuts the link, 1,000,000
#   QoS 1 messages (50,000 with --quick) are published and acknowledged locally, the link comes
#   back, and the drain rate is the backlog over the first-to-last delivery at the remote (the
#   reconnection before it is shown apart). Both bridges get 20 messages in flight and a
#   1-second retry; mosquitto queues in memory without a bound (max_queued_messages 0), mqflux
#   in its durable bridge queue with `persistence.mode = "sync"` (a PUBACK means on disk).
#   About 2 minutes in full (10 s of throughput per broker, then 1,000,000 queued), about 25 s
#   with `--quick --only bridge`; each tool run has a hard timeout (25 minutes, 2 with --quick).
# - Both brokers are stopped on exit (trap), also on error or Ctrl-C.
# - Last, the forecasting models' fit time and peak heap on a week of per-minute data (10,080
#   points; `cargo run --release --example forecast_bench`, about 30 s) into DIR/forecast.txt;
#   --no-forecast skips it, and so does an --only list without the word "forecast".
#
# Results: DIR/mosquitto.jsonl, DIR/mqflux.jsonl, DIR/rumqttd.jsonl (one JSON object per scenario), the brokers'
# logs, and DIR/side-by-side.txt (also printed). DIR defaults to target/bench/<UTC time>.
set -euo pipefail

cd "$(dirname "$0")/.."
ROOT=$(pwd)

QUICK=()
ONLY=""
DURATION=()
OUT=""
BUILD=1
INSTALL_RUMQTTD=0
FORECAST=1
DASHBOARD=0
LAT_ROUNDS=""
while [ $# -gt 0 ]; do
    case "$1" in
        --quick) QUICK=(--quick) ;;
        --only) ONLY="$2"; shift ;;
        --duration) DURATION=(--duration "$2"); shift ;;
        --latency-rounds)
            [[ "$2" =~ ^[1-9][0-9]*$ ]] || { echo "bench.sh: --latency-rounds needs a whole number >= 1, got '$2'" >&2; exit 2; }
            LAT_ROUNDS="$2"; shift ;;
        --out) OUT="$2"; shift ;;
        --no-build) BUILD=0 ;;
        --install-rumqttd) INSTALL_RUMQTTD=1 ;;
        --no-forecast) FORECAST=0 ;;
        --dashboard) DASHBOARD=1 ;;
        -h|--help) sed -n '2,/^set -e/p' "$0" | sed 's/^# \{0,1\}//; /^set -e/d'; exit 0 ;;
        *) echo "bench.sh: unknown argument $1 (try --help)" >&2; exit 2 ;;
    esac
    shift
done

OUT=${OUT:-$ROOT/target/bench/$(date -u +%Y%m%dT%H%M%SZ)}
mkdir -p "$OUT"
: > "$OUT/mosquitto.jsonl"
: > "$OUT/mqflux.jsonl"
: > "$OUT/rumqttd.jsonl"
: > "$OUT/mqflux-dashboard.jsonl"

log() { printf '[bench] %s\n' "$*" >&2; }

# --- mosquitto -------------------------------------------------------------------------------
MOSQUITTO=$(command -v mosquitto || true)
[ -z "$MOSQUITTO" ] && [ -x /usr/sbin/mosquitto ] && MOSQUITTO=/usr/sbin/mosquitto
if [ -z "$MOSQUITTO" ]; then
    log "mosquitto not found: installing Debian's package"
    if [ "$(id -u)" -ne 0 ]; then
        echo "bench.sh: mosquitto is missing and installing it needs root (apt-get install mosquitto)" >&2
        exit 2
    fi
    DEBIAN_FRONTEND=noninteractive apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq mosquitto >/dev/null
    MOSQUITTO=/usr/sbin/mosquitto
fi

# --- rumqttd (optional third broker) -----------------------------------------------------------
RUMQTTD=${RUMQTTD:-$(command -v rumqttd || true)}
[ -z "$RUMQTTD" ] && [ -x "$ROOT/.tools/bin/rumqttd" ] && RUMQTTD=$ROOT/.tools/bin/rumqttd
if [ -z "$RUMQTTD" ] && [ "$INSTALL_RUMQTTD" = 1 ]; then
    log "installing rumqttd with cargo into $ROOT/.tools (long on few cores)"
    cargo install --quiet rumqttd --root "$ROOT/.tools"
    RUMQTTD=$ROOT/.tools/bin/rumqttd
fi
[ -z "$RUMQTTD" ] && log "rumqttd not found (\$RUMQTTD, PATH, .tools/bin): skipping it (--install-rumqttd installs it)"

# --- build -----------------------------------------------------------------------------------
if [ "$BUILD" = 1 ]; then
    log "building release binaries"
    cargo build --release --quiet --bin mqflux --bin mqflux-bench
fi
# MQFLUX_BIN / MQFLUX_BENCH_BIN: other binaries (the tests run --quick --only bridge on debug builds).
MQFLUX=${MQFLUX_BIN:-$ROOT/target/release/mqflux}
BENCH=${MQFLUX_BENCH_BIN:-$ROOT/target/release/mqflux-bench}
[ -x "$MQFLUX" ] && [ -x "$BENCH" ] || { echo "bench.sh: $MQFLUX or $BENCH missing" >&2; exit 2; }

# --- pinning and limits ----------------------------------------------------------------------
TOOL_PIN=()
BROKER_PIN=()
if [ -z "${BENCH_NO_PIN:-}" ] && command -v taskset >/dev/null && [ "$(nproc)" -ge 2 ]; then
    TOOL_PIN=(taskset -c 0)
    BROKER_PIN=(taskset -c 1)
    log "pinning: load tool on CPU 0, brokers on CPU 1"
else
    log "no CPU pinning (taskset missing, 1 CPU, or BENCH_NO_PIN set)"
fi
if [ -n "${BENCH_NICE:-}" ]; then
    TOOL_PIN=(nice -n "$BENCH_NICE" "${TOOL_PIN[@]}")
    BROKER_PIN=(nice -n "$BENCH_NICE" "${BROKER_PIN[@]}")
    log "nice level $BENCH_NICE for brokers and tool"
fi
# Connection scale needs one descriptor per connection on each side.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
log "open-files limit: $(ulimit -n)"

# A TCP port on 127.0.0.1 that nothing listens on.
free_port() {
    local p
    for _ in $(seq 1 200); do
        p=$(( 20000 + RANDOM % 30000 ))
        if ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then
            echo "$p"
            return 0
        fi
    done
    echo "bench.sh: no free port found" >&2
    return 1
}

# Wait until something accepts connections on a port (10 s at most).
wait_port() {
    local port=$1 pid=$2 name=$3
    for _ in $(seq 1 100); do
        if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
            return 0
        fi
        if ! kill -0 "$pid" 2>/dev/null; then
            echo "bench.sh: $name exited during start-up; log:" >&2
            tail -20 "$OUT/$name.log" >&2
            return 1
        fi
        sleep 0.1
    done
    echo "bench.sh: $name did not listen on port $port within 10 s" >&2
    return 1
}

ONLY_ARGS=()
[ -n "$ONLY" ] && ONLY_ARGS=(--only "$ONLY")
mapfile -t SCENARIOS < <("$BENCH" suite "${QUICK[@]}" "${ONLY_ARGS[@]}" --list)
# The bridge scenarios run after the suite's, with brokers of their own.
BRIDGE=0
if [ -z "$ONLY" ]; then
    BRIDGE=1
else
    for w in ${ONLY//,/ }; do
        [[ "bridge drain" == *"$w"* ]] && BRIDGE=1
    done
fi
[ ${#SCENARIOS[@]} -gt 0 ] || [ "$BRIDGE" = 1 ] || [[ ",$ONLY," == *forecast* ]] \
    || { echo "bench.sh: --only $ONLY matches no scenario" >&2; exit 2; }

MOSQ_PID=""
MQF_PID=""
RUM_PID=""
BRIDGE_PIDS=""
DASH_PID=""
VIEWER_PIDS=""
cleanup() {
    for pid in $VIEWER_PIDS; do
        kill "$pid" 2>/dev/null || true
    done
    for pid in $MOSQ_PID $MQF_PID $RUM_PID $DASH_PID $BRIDGE_PIDS; do
        kill "$pid" 2>/dev/null || true
    done
    for pid in $MOSQ_PID $MQF_PID $RUM_PID $DASH_PID $BRIDGE_PIDS; do
        for _ in $(seq 1 50); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.1
        done
        kill -9 "$pid" 2>/dev/null || true
    done
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# Latency rounds: 3 s each, or half the scenario duration if that is shorter (--quick, --duration).
SCENARIO_SECS=${DURATION[1]:-$([ ${#QUICK[@]} -gt 0 ] && echo 3 || echo 10)}
ROUND_SECS=$(awk -v d="$SCENARIO_SECS" 'BEGIN { print (d / 2 < 3 ? d / 2 : 3) }')
LAT_ROUNDS=${LAT_ROUNDS:-$([ ${#QUICK[@]} -gt 0 ] && echo 2 || echo 16)}

if [ ${#SCENARIOS[@]} -gt 0 ]; then
MOSQ_PORT=$(free_port)
cat > "$OUT/mosquitto.conf" <<EOF
listener $MOSQ_PORT 127.0.0.1
allow_anonymous true
persistence false
max_inflight_messages 20
max_queued_messages 1000
max_connections -1
set_tcp_nodelay true
log_dest file $OUT/mosquitto.log
log_type error
log_type warning
log_type notice
EOF
"${BROKER_PIN[@]}" "$MOSQUITTO" -c "$OUT/mosquitto.conf" >>"$OUT/mosquitto.log" 2>&1 &
MOSQ_PID=$!
wait_port "$MOSQ_PORT" "$MOSQ_PID" mosquitto

MQF_PORT=$(free_port)
while [ "$MQF_PORT" = "$MOSQ_PORT" ]; do MQF_PORT=$(free_port); done
cp "$ROOT/scripts/bench-mqflux.toml" "$OUT/mqflux.toml"
"${BROKER_PIN[@]}" "$MQFLUX" --config "$OUT/mqflux.toml" --bind 127.0.0.1 --port "$MQF_PORT" -q \
    >"$OUT/mqflux.log" 2>&1 &
MQF_PID=$!
wait_port "$MQF_PORT" "$MQF_PID" mqflux

if [ -n "$RUMQTTD" ]; then
    RUM_PORT=$(free_port)
    while [ "$RUM_PORT" = "$MOSQ_PORT" ] || [ "$RUM_PORT" = "$MQF_PORT" ]; do RUM_PORT=$(free_port); done
    RUM_PORT5=$(free_port)
    while [ "$RUM_PORT5" = "$MOSQ_PORT" ] || [ "$RUM_PORT5" = "$MQF_PORT" ] || [ "$RUM_PORT5" = "$RUM_PORT" ]; do RUM_PORT5=$(free_port); done
    # Its default router and connection settings (rumqttd.toml of rumqttd 0.20, so 100 QoS 1/2
    # messages in flight where the others get 20); MQTT 3.1.1 and 5 need a listener each.
    cat > "$OUT/rumqttd.toml" <<EOF
id = 0

[router]
id = 0
max_connections = 10010
max_outgoing_packet_count = 200
max_segment_size = 104857600
max_segment_count = 10

[v4.1]
name = "v4-1"
listen = "127.0.0.1:$RUM_PORT"
next_connection_delay_ms = 1
    [v4.1.connections]
    connection_timeout_ms = 60000
    max_payload_size = 20480
    max_inflight_count = 100
    dynamic_filters = true

[v5.1]
name = "v5-1"
listen = "127.0.0.1:$RUM_PORT5"
next_connection_delay_ms = 1
    [v5.1.connections]
    connection_timeout_ms = 60000
    max_payload_size = 20480
    max_inflight_count = 100
EOF
    "${BROKER_PIN[@]}" "$RUMQTTD" --config "$OUT/rumqttd.toml" >"$OUT/rumqttd.log" 2>&1 &
    RUM_PID=$!
    wait_port "$RUM_PORT" "$RUM_PID" rumqttd
    log "rumqttd pid $RUM_PID port $RUM_PORT (fan-in scenarios)"
fi

if [ "$DASHBOARD" = 1 ]; then
    DASH_PORT=$(free_port)
    while [ "$DASH_PORT" = "$MOSQ_PORT" ] || [ "$DASH_PORT" = "$MQF_PORT" ]; do DASH_PORT=$(free_port); done
    DASH_HTTP=$(free_port)
    while [ "$DASH_HTTP" = "$DASH_PORT" ]; do DASH_HTTP=$(free_port); done
    { cat "$ROOT/scripts/bench-mqflux.toml"; printf '\n[dashboard]\nbind = "127.0.0.1:%s"\n' "$DASH_HTTP"; } \
        > "$OUT/mqflux-dashboard.toml"
    "${BROKER_PIN[@]}" "$MQFLUX" --config "$OUT/mqflux-dashboard.toml" --bind 127.0.0.1 \
        --port "$DASH_PORT" -q >"$OUT/mqflux-dashboard.log" 2>&1 &
    DASH_PID=$!
    wait_port "$DASH_PORT" "$DASH_PID" mqflux-dashboard
    wait_port "$DASH_HTTP" "$DASH_PID" mqflux-dashboard
    # The open dashboard: an event stream, and the page's reads once a second (the tool's CPU).
    "${TOOL_PIN[@]}" curl -sN "http://127.0.0.1:$DASH_HTTP/api/v1/events" >"$OUT/dashboard-events.txt" 2>&1 &
    VIEWER_PIDS="$!"
    (
        while kill -0 "$DASH_PID" 2>/dev/null; do
            for path in overview clients topics; do
                curl -s -o /dev/null "http://127.0.0.1:$DASH_HTTP/api/v1/$path" || true
            done
            sleep 1
        done
    ) &
    VIEWER_PIDS="$VIEWER_PIDS $!"
    log "mqflux with dashboard pid $DASH_PID port $DASH_PORT, dashboard http://127.0.0.1:$DASH_HTTP/ (open: SSE + polling)"
fi

log "mosquitto $("$MOSQUITTO" -h 2>/dev/null | head -1 | awk '{print $3}') pid $MOSQ_PID port $MOSQ_PORT"
log "mqflux pid $MQF_PID port $MQF_PORT"
log "results in $OUT"

# One scenario against one broker; a hung run is cut off after 3 minutes. Optional 5th
# argument: seconds to run instead of the suite's duration.
run_one() {
    local label=$1 port=$2 pid=$3 scenario=$4 duration=("${DURATION[@]}")
    [ -n "${5:-}" ] && duration=(--duration "$5")
    if ! kill -0 "$pid" 2>/dev/null; then
        log "$label is no longer running: skipping '$scenario'"
        return 0
    fi
    timeout --kill-after=10 180 "${TOOL_PIN[@]}" "$BENCH" suite "${QUICK[@]}" "${duration[@]}" \
        --only "$scenario" --label "$label" --port "$port" --broker-pid "$pid" \
        --json "$OUT/$label.jsonl" 2>>"$OUT/bench-tool.log" | tail -n +2 | sed "s/^/  $label: /" || true
}

START=$(date +%s)
for s in "${SCENARIOS[@]}"; do
    log "scenario: $s"
    case "$s" in
        latency*)
            for r in $(seq 1 "$LAT_ROUNDS"); do
                if [ $((r % 2)) = 1 ]; then
                    run_one mosquitto "$MOSQ_PORT" "$MOSQ_PID" "$s" "$ROUND_SECS"
                    run_one mqflux "$MQF_PORT" "$MQF_PID" "$s" "$ROUND_SECS"
                    if [ -n "$DASH_PID" ]; then run_one mqflux-dashboard "$DASH_PORT" "$DASH_PID" "$s" "$ROUND_SECS"; fi
                else
                    if [ -n "$DASH_PID" ]; then run_one mqflux-dashboard "$DASH_PORT" "$DASH_PID" "$s" "$ROUND_SECS"; fi
                    run_one mqflux "$MQF_PORT" "$MQF_PID" "$s" "$ROUND_SECS"
                    run_one mosquitto "$MOSQ_PORT" "$MOSQ_PID" "$s" "$ROUND_SECS"
                fi
            done
            ;;
        *)
            run_one mosquitto "$MOSQ_PORT" "$MOSQ_PID" "$s"
            run_one mqflux "$MQF_PORT" "$MQF_PID" "$s"
            if [ -n "$DASH_PID" ]; then run_one mqflux-dashboard "$DASH_PORT" "$DASH_PID" "$s"; fi
            case "$s" in
                fan-in*v5) if [ -n "$RUM_PID" ]; then run_one rumqttd "$RUM_PORT5" "$RUM_PID" "$s"; fi ;;
                fan-in*) if [ -n "$RUM_PID" ]; then run_one rumqttd "$RUM_PORT" "$RUM_PID" "$s"; fi ;;
            esac
            ;;
    esac
done
log "scenarios took $(( $(date +%s) - START )) s"

for pair in "mosquitto:$MOSQ_PID" "mqflux:$MQF_PID" ${DASH_PID:+"mqflux-dashboard:$DASH_PID"}; do
    kill -0 "${pair#*:}" 2>/dev/null || log "WARNING: ${pair%%:*} died during the run (see $OUT/${pair%%:*}.log)"
done
cleanup
MOSQ_PID=""
MQF_PID=""
RUM_PID=""
DASH_PID=""
VIEWER_PIDS=""
fi

# --- bridges -----------------------------------------------------------------------------------
if [ "$BRIDGE" = 1 ]; then
    BACKLOG=$([ ${#QUICK[@]} -gt 0 ] && echo 50000 || echo 1000000)
    REMOTE_PORT=$(free_port)
    # The remote: an mqflux that holds the bridges back rather than dropping (both alike).
    cat > "$OUT/bridge-remote.toml" <<EOF
[limits]
max_connections = 0
max_inflight = 100
max_queued = 10000
queue_full = "backpressure"
EOF
    "${BROKER_PIN[@]}" "$MQFLUX" --config "$OUT/bridge-remote.toml" --bind 127.0.0.1 --port "$REMOTE_PORT" -q \
        >"$OUT/bridge-remote.log" 2>&1 &
    REMOTE_PID=$!
    BRIDGE_PIDS="$REMOTE_PID"
    wait_port "$REMOTE_PORT" "$REMOTE_PID" bridge-remote

    # run_bridge LABEL PORT PID GATE: both phases against one bridging broker.
    run_bridge() {
        timeout --kill-after=10 "$([ ${#QUICK[@]} -gt 0 ] && echo 120 || echo 1500)" "${TOOL_PIN[@]}" \
            "$BENCH" bridge --port "$2" --remote-port "$REMOTE_PORT" --gate-port "$4" \
            --duration "$SCENARIO_SECS" --backlog "$BACKLOG" --label "$1" --broker-pid "$3" \
            --json "$OUT/$1.jsonl" 2>>"$OUT/bench-tool.log" | tail -n +2 | sed "s/^/  $1: /" || true
    }

    MOSQ_BPORT=$(free_port)
    MOSQ_GATE=$(free_port)
    cat > "$OUT/mosquitto-bridge.conf" <<EOF
listener $MOSQ_BPORT 127.0.0.1
allow_anonymous true
persistence false
max_inflight_messages 20
max_queued_messages 0
set_tcp_nodelay true
log_dest file $OUT/mosquitto-bridge.log
log_type error
log_type warning
log_type notice

connection bench
address 127.0.0.1:$MOSQ_GATE
remote_clientid bench-mosquitto
topic mqflux-bench/# out 1
cleansession false
try_private false
notifications false
restart_timeout 1
EOF
    "${BROKER_PIN[@]}" "$MOSQUITTO" -c "$OUT/mosquitto-bridge.conf" >>"$OUT/mosquitto-bridge.log" 2>&1 &
    MOSQ_BPID=$!
    BRIDGE_PIDS="$BRIDGE_PIDS $MOSQ_BPID"
    wait_port "$MOSQ_BPORT" "$MOSQ_BPID" mosquitto-bridge
    log "scenario: bridge (mosquitto, backlog $BACKLOG)"
    run_bridge mosquitto "$MOSQ_BPORT" "$MOSQ_BPID" "$MOSQ_GATE"
    kill "$MOSQ_BPID" 2>/dev/null || true

    MQF_BPORT=$(free_port)
    MQF_GATE=$(free_port)
    mkdir -p "$OUT/mqflux-bridge-state"
    cat > "$OUT/mqflux-bridge.toml" <<EOF
[limits]
max_connections = 0
max_inflight = 20
max_queued = 1000

[persistence]
dir = "$OUT/mqflux-bridge-state"
mode = "sync"

[[bridges]]
connection = "bench"
address = ["127.0.0.1:$MQF_GATE"]
remote_clientid = "bench-mqflux"
topic = ["mqflux-bench/# out 1"]
cleansession = false
try_private = false
notifications = false
restart_timeout = 1
max_inflight = 20
EOF
    "${BROKER_PIN[@]}" "$MQFLUX" --config "$OUT/mqflux-bridge.toml" --bind 127.0.0.1 --port "$MQF_BPORT" -q \
        >"$OUT/mqflux-bridge.log" 2>&1 &
    MQF_BPID=$!
    BRIDGE_PIDS="$BRIDGE_PIDS $MQF_BPID"
    wait_port "$MQF_BPORT" "$MQF_BPID" mqflux-bridge
    log "scenario: bridge (mqflux, backlog $BACKLOG)"
    run_bridge mqflux "$MQF_BPORT" "$MQF_BPID" "$MQF_GATE"
    cleanup
    BRIDGE_PIDS=""
fi

{
    echo "mqflux-bench side by side ($(date -u +%Y-%m-%dT%H:%MZ), $(nproc) CPUs${TOOL_PIN:+, tool on CPU 0, brokers on CPU 1})"
    echo
    "$BENCH" compare "$OUT/mosquitto.jsonl" "$OUT/mqflux.jsonl"
    if [ -s "$OUT/rumqttd.jsonl" ]; then
        echo
        "$BENCH" compare "$OUT/rumqttd.jsonl" "$OUT/mqflux.jsonl"
    fi
    if [ -s "$OUT/mqflux-dashboard.jsonl" ]; then
        echo
        echo "mqflux with the dashboard open (SSE + polling) / mqflux without:"
        "$BENCH" compare "$OUT/mqflux.jsonl" "$OUT/mqflux-dashboard.jsonl"
        echo "dashboard: $(grep -c '^event: sample' "$OUT/dashboard-events.txt" || true) SSE samples received"
    fi
} | tee "$OUT/side-by-side.txt"

# --only picks what runs: the forecast too, when named.
if [ -n "$ONLY" ] && [[ ",$ONLY," != *forecast* ]]; then
    FORECAST=0
fi
if [ "$FORECAST" = 1 ]; then
    echo
    log "forecast models: fit time and memory on a week of per-minute data"
    if [ "$BUILD" = 1 ]; then
        cargo build --release --quiet --example forecast_bench
    fi
    timeout 300 "$ROOT/target/release/examples/forecast_bench" | tee "$OUT/forecast.txt"
fi
