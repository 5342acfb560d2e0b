#!/usr/bin/env bash
# Fuzz targets (docs/decisions.md D22): each pore-ring consumer facing a hostile peer, the frame decoder, the
# xenstore codec, the strawman handshake, and pore's xenstored facing hostile guests (its
# state recounted after every step; the _diff target adds a first-principles permission
# model), and a straw's JSON envelopes and mailboxes against a model. ~20 s each (override
# with PORE_FUZZ_SECONDS); seeds in fuzz/seeds/<target> are replayed first (the hand-written
# regression scenarios). The fuzz crate is its own workspace: formatted and linted here too.
set -euo pipefail
secs="${PORE_FUZZ_SECONDS:-20}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/tmp/pore-target}/fuzz"
cd fuzz
echo "fuzz: fmt + clippy of the fuzz crate"
cargo +nightly fmt --check
cargo +nightly clippy --all-targets -- -D warnings
for t in ring_xenstore ring_ling ring_v2 frame_decoder xenstore_codec straw_handshake \
  xenstored xenstored_diff straw_json; do
  echo "fuzz: $t for ${secs}s"
  corpus=("corpus/$t")
  mkdir -p "corpus/$t"
  case "$t" in
    xenstored*) corpus+=(seeds/xenstored); opts=(-max_len=4096 -len_control=0) ;;
    straw_json) corpus+=(seeds/straw_json); opts=() ;;
    *) opts=() ;;
  esac
  cargo +nightly fuzz run "$t" "${corpus[@]}" -- -max_total_time="$secs" -rss_limit_mb=2048 \
    "${opts[@]}" 2>&1 | tail -n 20
  test "${PIPESTATUS[0]}" -eq 0
done
