#!/usr/bin/env bash
# Benches in CI (docs/decisions.md D22): the comparative harness in benches/ is compiled, not
# run (`cargo bench -p pore-benches` runs it by hand); pore-ring's criterion benches run once
# each as a smoke test (`cargo test --benches`: criterion's test mode, nothing timed).
set -euo pipefail
cargo bench -p pore-benches --no-run
cargo test -p pore-ring --benches
