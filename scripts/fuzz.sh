#!/usr/bin/env bash
# Fuzz the MQTT packet decoder for a bounded time (cargo-fuzz / libFuzzer).
#
#   scripts/fuzz.sh [SECONDS] [TARGET]     SECONDS defaults to 60, TARGET to "decode"
#                                          (the other target is "roundtrip")
#
# Seeds come from fuzz/corpus/TARGET (committed, read-only here); inputs libFuzzer finds are kept
# in fuzz/target/corpus/TARGET so a run leaves the git tree clean. A crash, hang or oversized
# allocation stops the run with a non-zero exit and leaves the input in fuzz/artifacts/TARGET/;
# reproduce with `RUSTC_BOOTSTRAP=1 cargo fuzz run TARGET fuzz/artifacts/TARGET/<file>` from fuzz/.
set -euo pipefail

seconds="${1:-60}"
target="${2:-decode}"
cd "$(dirname "$0")/../fuzz"

if ! cargo fuzz --version >/dev/null 2>&1; then
    cargo install cargo-fuzz --locked
fi

# cargo-fuzz passes nightly-only flags (-Zsanitizer=address, sanitizer coverage); a stable
# toolchain accepts them when RUSTC_BOOTSTRAP=1. Harmless on nightly.
export RUSTC_BOOTSTRAP=1

mkdir -p "target/corpus/$target"
# -max_len           inputs up to 4 KiB: several frames, and larger than the target's 1 KiB limit
# -timeout           one input taking more than 5 s is reported as a hang
# -malloc_limit_mb   any single allocation above 64 MB is reported (the decoder must not trust
#                    a length field; needs the address sanitizer, cargo-fuzz's default)
# -rss_limit_mb      total memory above 512 MB is reported (slow leaks / growth)
exec cargo fuzz run "$target" "target/corpus/$target" "corpus/$target" -- \
    -max_total_time="$seconds" \
    -max_len=4096 \
    -timeout=5 \
    -malloc_limit_mb=64 \
    -rss_limit_mb=512 \
    -print_final_stats=1
