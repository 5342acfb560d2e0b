#!/usr/bin/env bash
# Miri (docs/decisions.md D22): pore-core's audited `shared` module and pore-ring, with few
# proptest cases.
set -euo pipefail
# Miri's weak-memory emulation panics (an ICE) on the mixed-size atomics of `shared`'s word-wise
# copies (u8 head/tail and u64 words over the same bytes across calls); data-race detection stays on.
export MIRIFLAGS="${MIRIFLAGS:--Zmiri-disable-isolation -Zmiri-disable-weak-memory-emulation}"
export PROPTEST_CASES="${PROPTEST_CASES:-3}"
cargo +nightly miri test -p pore-core --lib --features std -- shared::
cargo +nightly miri test -p pore-ring --lib --all-features
