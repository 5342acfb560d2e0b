#!/usr/bin/env bash
# Loom models of the v2 ring's index publication and notification suppression
# (docs/decisions.md D2). `--cfg loom` changes every crate, so it builds in its own target
# directory.
set -euo pipefail
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/tmp/pore-target}/loom"
RUSTFLAGS="${RUSTFLAGS:-} --cfg loom" cargo test -p pore-ring --release --lib loom
