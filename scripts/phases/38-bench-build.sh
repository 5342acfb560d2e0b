#!/usr/bin/env bash
# Benches are compiled in CI, not run (D22): `cargo bench -p pore-benches` runs them by hand.
set -euo pipefail
cargo bench -p pore-benches --no-run
