#!/usr/bin/env bash
# Reproduce the README's forecasting backtest: every model (seasonal naive per season, ETS,
# MSTL, LSTM) on the bundled series, rolling origin, day-ahead, MASE and 80% interval coverage.
#
#   scripts/forecast-backtest.sh [--quick]
#
# - taylor.csv: half-hourly electricity demand, 48 steps (a day) ahead, 7 daily origins.
# - seattle-temps.csv, sf-temps.csv: hourly temperatures, 24 steps ahead, 7 daily origins, the
#   last 12 weeks (2016 points) before each origin.
# - mqflux-traffic.csv: mqflux's own publish rate (scripts/forecast-recording.sh), 60 steps
#   (one compressed "day") ahead, 3 origins.
# Each series' table and winner, then one Markdown table of all rows (as in the README).
# --quick: no LSTM and 2 origins (seconds instead of minutes). MQFLUX=path uses that binary
# instead of building target/release/mqflux.
set -euo pipefail
cd "$(dirname "$0")/.."
QUICK=()
ORIGINS=7
TRAFFIC_ORIGINS=3
case "${1:-}" in
    --quick) QUICK=(--no-lstm); ORIGINS=2; TRAFFIC_ORIGINS=2 ;;
    "") ;;
    -h|--help) sed -n '2,/^set -e/p' "$0" | sed 's/^# \{0,1\}//; /^set -e/d'; exit 0 ;;
    *) echo "forecast-backtest.sh: unknown argument $1 (try --help)" >&2; exit 2 ;;
esac
if [ -z "${MQFLUX:-}" ]; then
    cargo build --release --quiet --bin mqflux
    MQFLUX=target/release/mqflux
fi
ROWS=$(mktemp)
ONE=$(mktemp)
trap 'rm -f "$ROWS" "$ONE"' EXIT
run() {
    "$MQFLUX" forecast --no-forecast --markdown "${QUICK[@]}" "$@" > "$ONE"
    cat "$ONE" >&2
    grep '^| ' "$ONE" | grep -v -e '^| series' -e '^| ---' >> "$ROWS"
}
D=data/forecast
run --backtest-file $D/taylor.csv --horizon-steps 48 --origins $ORIGINS
run --backtest-file $D/seattle-temps.csv --horizon-steps 24 --origins $ORIGINS --max-history 2016
run --backtest-file $D/sf-temps.csv --horizon-steps 24 --origins $ORIGINS --max-history 2016
run --backtest-file $D/mqflux-traffic.csv --horizon-steps 60 --origins $TRAFFIC_ORIGINS
echo
echo "| series | model | MASE | coverage (80%) | fit ms |"
echo "| --- | --- | ---: | ---: | ---: |"
cat "$ROWS"
