#!/usr/bin/env bash
# Run the whole main job on this machine: an MQTT broker on port 1883 whose publishes land in
# InfluxDB, with all state in one local directory.
#
#   1. builds mqflux in release mode (installs a Rust toolchain first if there is none);
#   2. makes sure an InfluxDB 1.x answers on 127.0.0.1:$MQFLUX_INFLUX_PORT: one already
#      answering there is used as it is; otherwise Debian's influxdb (and influxdb-client, for
#      the `influx` CLI, and mosquitto-clients) are installed with apt-get if missing, as root
#      or through sudo, and the script starts its own influxd with its data in the state
#      directory, and stops it again after mqflux has stopped;
#   3. writes $MQFLUX_STATE_DIR/mqflux.toml (rewritten at every start) and runs mqflux with it:
#      one MQTT listener on 127.0.0.1 (this machine only; anonymous clients accepted there),
#      the InfluxDB sink on (database mqtt_data, topics sensors/{device}/{measurement} map to
#      measurement + device tag), the sink's spool and the broker's persistence in the state
#      directory, so a second run keeps retained messages, sessions and unsent points.
#
# Ctrl-C (SIGINT) or SIGTERM stops mqflux first (it flushes the sink), then the influxd this
# script started; the script exits with mqflux's status. Extra arguments go to mqflux, e.g.
# `scripts/run.sh --log-messages`.
#
# Environment:
#   MQFLUX_STATE_DIR    directory for the generated config, spool, persistence and the
#                       influxd data (default: run-state/ in this checkout)
#   MQFLUX_PORT         MQTT port (default 1883)
#   MQFLUX_INFLUX_PORT  InfluxDB HTTP port on 127.0.0.1 (default 8086); pick another one to
#                       leave an InfluxDB on 8086 alone: the script then starts its own there
#   MQFLUX_BIN          an mqflux binary to run instead of building one (e.g. a debug build)
set -euo pipefail
cd "$(dirname "$0")/.."

state=${MQFLUX_STATE_DIR:-run-state}
port=${MQFLUX_PORT:-1883}
influx_port=${MQFLUX_INFLUX_PORT:-8086}

say() { echo "run.sh: $*" >&2; }

for v in port influx_port; do
    if ! [[ ${!v} =~ ^[0-9]+$ ]] || [ "${!v}" -lt 1 ] || [ "${!v}" -gt 65535 ]; then
        say "MQFLUX_${v^^} must be a TCP port number (1-65535), got '${!v}'"
        exit 2
    fi
done
mkdir -p "$state"
state=$(cd "$state" && pwd)
if [[ $state == *"'"* ]]; then
    # The paths go into TOML literal strings, which cannot hold a single quote.
    say "MQFLUX_STATE_DIR must not contain a single quote: $state"
    exit 2
fi

# An InfluxDB answers GET /ping with 204. Plain bash (/dev/tcp): curl may not be installed.
influx_answers() {
    (
        exec 3<>"/dev/tcp/127.0.0.1/$influx_port" || exit 1
        printf 'GET /ping HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n' >&3
        IFS= read -r -t 5 status <&3 || exit 1
        [[ $status == HTTP/1.?" 204"* ]]
    ) 2>/dev/null
}

# install_missing PACKAGE:COMMAND...: apt-get install the packages whose command is not on PATH.
install_missing() {
    local missing=() p
    for p in "$@"; do
        command -v "${p#*:}" >/dev/null 2>&1 || missing+=("${p%%:*}")
    done
    [ ${#missing[@]} -gt 0 ] || return 0
    say "installing ${missing[*]}"
    local sudo=()
    [ "$(id -u)" -eq 0 ] || sudo=(sudo)
    "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update
    "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${missing[@]}"
}

# 1. The broker binary.
if [ -n "${MQFLUX_BIN:-}" ]; then
    bin=$MQFLUX_BIN
    [ -x "$bin" ] || { say "MQFLUX_BIN=$bin is not an executable file"; exit 2; }
else
    . scripts/install-rust.sh
    cargo build --release --locked --bin mqflux
    bin=${CARGO_TARGET_DIR:-target}/release/mqflux
fi

# Say so before starting anything if the MQTT port is taken (Debian's mosquitto package, which
# scripts/test.sh installs, runs a service on 1883 where systemd runs).
if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
    say "127.0.0.1:$port is already in use (a mosquitto service? systemctl stop mosquitto);" \
        "stop it or pick another port with MQFLUX_PORT=N"
    exit 1
fi

# 2. InfluxDB, and the clients the README's quick start uses.
influxd_pid=
mqflux_pid=
stop() {
    trap - INT TERM HUP
    local status=${1:-0}
    if [ -n "$mqflux_pid" ]; then
        # SIGINT, as Ctrl-C: mqflux disconnects its clients and flushes the sink to InfluxDB.
        kill -INT "$mqflux_pid" 2>/dev/null || true
        wait "$mqflux_pid" || status=$?
        mqflux_pid=
    fi
    if [ -n "$influxd_pid" ]; then
        say "stopping influxd (pid $influxd_pid)"
        kill -TERM "$influxd_pid" 2>/dev/null || true
        wait "$influxd_pid" || true
        rm -f "$state/influxd.pid"
        influxd_pid=
    fi
    rm -f "$state/mqflux.pid"
    exit "$status"
}
trap stop INT TERM HUP

tools=(influxdb-client:influx mosquitto-clients:mosquitto_pub)
if influx_answers; then
    say "using the InfluxDB already answering on 127.0.0.1:$influx_port"
    install_missing "${tools[@]}"
else
    install_missing influxdb:influxd "${tools[@]}"
    if [ "$influx_port" -eq 8086 ] && [ -d /run/systemd/system ] \
        && systemctl is-active --quiet influxdb 2>/dev/null; then
        # Debian's package starts its own service on 8086 where systemd runs: use that one.
        for _ in $(seq 100); do influx_answers && break; sleep 0.1; done
    fi
fi
if influx_answers; then
    :
else
    dir=$state/influxdb
    mkdir -p "$dir"
    # Only the HTTP API on the chosen port; the backup/restore RPC service takes any free
    # port (it cannot be turned off); reporting and the other inputs are off.
    cat >"$dir/influxdb.conf" <<EOF
# Written by scripts/run.sh at every start.
reporting-enabled = false
bind-address = "127.0.0.1:0"

[meta]
  dir = '$dir/meta'

[data]
  dir = '$dir/data'
  wal-dir = '$dir/wal'
  query-log-enabled = false

[monitor]
  store-enabled = false

[http]
  bind-address = "127.0.0.1:$influx_port"
  log-enabled = false

[logging]
  level = "warn"
  suppress-logo = true
EOF
    say "starting influxd on 127.0.0.1:$influx_port (data in $dir, log in $dir/influxd.log)"
    # Its own session: Ctrl-C in the terminal reaches mqflux and this script, not influxd,
    # which must outlive mqflux until the sink has flushed. This script stops it.
    setsid influxd -config "$dir/influxdb.conf" >>"$dir/influxd.log" 2>&1 </dev/null &
    influxd_pid=$!
    echo "$influxd_pid" >"$state/influxd.pid"
    for _ in $(seq 600); do
        influx_answers && break
        if ! kill -0 "$influxd_pid" 2>/dev/null; then
            influxd_pid=
            say "influxd exited at start-up; its log ($dir/influxd.log) ends with:"
            tail -n 20 "$dir/influxd.log" >&2
            stop 1
        fi
        sleep 0.1
    done
    influx_answers || { say "influxd does not answer on 127.0.0.1:$influx_port after 60 s"; stop 1; }
fi

# 3. mqflux, with the sink on and its state in the state directory.
cat >"$state/mqflux.toml" <<EOF
# Written by scripts/run.sh at every start: edits are lost. To change it, copy it and run
# mqflux --config COPY (see config.example.toml for every option).
[[listeners]]
bind = "127.0.0.1"
port = $port

[sink]
enabled = true
url = "http://127.0.0.1:$influx_port"
database = "mqtt_data"
spool_dir = '$state/spool'

[[sink.rules]]
topic = "sensors/{device}/{measurement}"

[persistence]
dir = '$state/persistence'
EOF
say "starting mqflux on 127.0.0.1:$port (config $state/mqflux.toml); Ctrl-C stops it"
"$bin" --config "$state/mqflux.toml" "$@" &
mqflux_pid=$!
echo "$mqflux_pid" >"$state/mqflux.pid"
# `wait` returns early when a trapped signal arrives; the trap then stops everything.
status=0
wait "$mqflux_pid" || status=$?
mqflux_pid=
stop "$status"
