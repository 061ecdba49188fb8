#!/usr/bin/env bash
# Per-connection memory breakdown of the mqflux broker (issue 8: idle connections).
#
#   scripts/connmem/run.sh NAME COUNT [VAR=VALUE ...]
#
# Starts target/release/mqflux (or $BIN) with the given environment (e.g. MALLOC_ARENA_MAX=1,
# GLIBC_TUNABLES=...), opens COUNT idle MQTT 3.1.1 connections with mqflux-bench, snapshots the
# broker's /proc/PID/{smaps,status} and every thread's stack pointer before and while the
# connections are held (after their PINGREQ round trip), then prints:
#   - the bench's own figure (rss_per_conn_kib, measured before the PINGREQs),
#   - RSS per connection by kind of mapping: reader stacks (conn-N), writer stacks (conn-N-w),
#     glibc malloc arena heaps, the brk heap, other anonymous mappings,
#   - each stack's high-water mark in bytes from the top of its mapping (lowest non-zero byte,
#     read through /proc/PID/mem) and its depth while blocked.
# scripts/connmem/deadstack.py PID THREAD lists the stale return addresses below a thread's
# stack pointer: the call chain that set its high-water mark.
# Needs root (for /proc/PID/mem and /proc/PID/task/*/syscall). Build first:
# cargo build --release --bins. Results in target/connmem/NAME/.
set -u
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
HERE=$ROOT/scripts/connmem
name=$1; count=$2; shift 2
BIN=${BIN:-$ROOT/target/release/mqflux}
BENCH=$ROOT/target/release/mqflux-bench
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
out=$ROOT/target/connmem/$name; rm -rf "$out"; mkdir -p "$out"
cp "$ROOT/scripts/bench-mqflux.toml" "$out/mqflux.toml"
port=$(( 30000 + RANDOM % 20000 ))
env "$@" "$BIN" --config "$out/mqflux.toml" --bind 127.0.0.1 --port $port -q > "$out/broker.log" 2>&1 &
bpid=$!
trap 'kill $bpid 2>/dev/null' EXIT
for _ in $(seq 100); do (exec 3<>/dev/tcp/127.0.0.1/$port) 2>/dev/null && break; sleep 0.1; done
sleep 0.5
"$HERE/snap.py" $bpid "$out/before"
"$BENCH" connections --port $port --count "$count" --threads 4 --broker-pid $bpid --hold "${HOLD:-12}" \
    --json "$out/result.json" > "$out/bench.out" 2> "$out/bench.err" &
tpid=$!
for _ in $(seq 600); do grep -q holding "$out/bench.err" && break; kill -0 $tpid 2>/dev/null || break; sleep 0.2; done
sleep 0.5
"$HERE/snap.py" $bpid "$out/after"
"$HERE/stackscan.py" $bpid "$out/after" > "$out/stack.txt" 2>&1
wait $tpid
echo "== $name ($*) count=$count"
python3 -c "import json; r=json.loads(open('$out/result.json').readline()); print(json.dumps(r.get('connections', r)))" 2>/dev/null
"$HERE/analyze.py" "$out/before" "$out/after" "$count"
cat "$out/stack.txt"
