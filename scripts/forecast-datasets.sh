#!/usr/bin/env bash
# Re-extract the public time series in data/forecast/ from the PyPI packages that bundle them
# (no network at run time of mqflux; this script needs PyPI and python3 only, no numpy/pandas).
#   taylor.csv          pmdarima 2.1.1 (MIT): pmdarima/datasets/taylor.py, half-hourly electricity
#                       demand in England and Wales, 5 June - 27 August 2000, MW (Taylor 2003;
#                       the R `forecast` package's `taylor`). 4032 points, seasons 48 and 336.
#   seattle-temps.csv   vega_datasets 0.9.0 (MIT): _data/seattle-temps.csv, hourly temperature
#   sf-temps.csv        (°F) in Seattle / San Francisco for 2010, public-domain NOAA data.
set -euo pipefail
out="$(cd "$(dirname "$0")/.." && pwd)/data/forecast"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
pip download --quiet --no-deps -d "$tmp" pmdarima==2.1.1 vega_datasets==0.9.0
(cd "$tmp" && for w in *.whl; do python3 -m zipfile -e "$w" x; done)
python3 - "$tmp/x" "$out" <<'PY'
import ast, datetime as dt, re, sys
src, out = sys.argv[1], sys.argv[2]
text = open(f"{src}/pmdarima/datasets/taylor.py").read()
values = ast.literal_eval("[" + re.search(r"np\.array\(\[(.*?)\]", text, re.S).group(1) + "]")
start = dt.datetime(2000, 6, 5, tzinfo=dt.timezone.utc)
with open(f"{out}/taylor.csv", "w") as f:
    f.write("time,value\n")
    for i, v in enumerate(values):
        f.write(f"{(start + dt.timedelta(minutes=30 * i)).strftime('%Y-%m-%dT%H:%M:%SZ')},{v}\n")
for name, date_col, fmt in [("seattle-temps", 0, "%Y/%m/%d %H:%M"), ("sf-temps", 1, "%Y/%m/%d %H:%M:%S")]:
    rows = open(f"{src}/vega_datasets/_data/{name}.csv").read().split("\n")[1:]
    with open(f"{out}/{name}.csv", "w") as f:
        f.write("time,value\n")
        for r in filter(None, rows):
            cols = r.split(",")
            t = dt.datetime.strptime(cols[date_col], fmt)  # local time as given; treated as UTC
            f.write(f"{t.strftime('%Y-%m-%dT%H:%M:%SZ')},{cols[1 - date_col]}\n")
PY
wc -l "$out"/*.csv
