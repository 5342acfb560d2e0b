#!/usr/bin/env bash
# Fuzz targets (docs/decisions.md D22): each pore-ring consumer facing a hostile peer, the frame
# decoder, the xenstore codec and the strawman handshake,
# ~20 s each. Override with PORE_FUZZ_SECONDS.
set -euo pipefail
secs="${PORE_FUZZ_SECONDS:-20}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/tmp/pore-target}/fuzz"
cd fuzz
for t in ring_xenstore ring_ling ring_v2 frame_decoder xenstore_codec straw_handshake; do
  echo "fuzz: $t for ${secs}s"
  cargo +nightly fuzz run "$t" -- -max_total_time="$secs" -rss_limit_mb=2048 2>&1 | tail -n 20
  test "${PIPESTATUS[0]}" -eq 0
done
