#!/usr/bin/env bash
# Unit, property, doc and integration tests of the whole workspace (no external daemons).
set -euo pipefail
cargo test --workspace --all-features --no-fail-fast
