#!/usr/bin/env bash
# Make sure a Rust toolchain new enough for mqflux (see rust-version in Cargo.toml) is on PATH.
# Does nothing when one is there already; otherwise installs Debian's build tools and rustup's
# stable toolchain for the current user. Meant to be sourced or run by the other scripts.
set -euo pipefail

min_minor=85 # Rust 1.85

have_rust() {
    command -v cargo >/dev/null 2>&1 || return 1
    local minor
    minor=$(rustc --version | sed -E 's/^rustc 1\.([0-9]+).*/\1/')
    [ "$minor" -ge "$min_minor" ]
}

if [ -f "$HOME/.cargo/env" ]; then
    # shellcheck disable=SC1091
    . "$HOME/.cargo/env"
fi

if ! have_rust; then
    echo "install-rust: no Rust >= 1.$min_minor found; installing build tools and rustup" >&2
    sudo=()
    [ "$(id -u)" -eq 0 ] || sudo=(sudo)
    "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update
    "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
        build-essential ca-certificates curl
    curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs | sh -s -- -y --profile minimal -c clippy -c rustfmt
    # shellcheck disable=SC1091
    . "$HOME/.cargo/env"
fi
