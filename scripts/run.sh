#!/usr/bin/env bash
# Build mqflux in release mode and run it with config.example.toml (port 1883 on every
# interface). Installs a Rust toolchain first if the machine has none. Extra arguments are
# passed to mqflux, e.g. `scripts/run.sh --port 1884 --log-messages`.
set -euo pipefail
cd "$(dirname "$0")/.."

. scripts/install-rust.sh
exec cargo run --release --locked -- --config config.example.toml "$@"
