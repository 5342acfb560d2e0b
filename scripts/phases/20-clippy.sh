#!/usr/bin/env bash
set -euo pipefail
RUSTFLAGS="${RUSTFLAGS:-} -D missing_docs" cargo clippy --workspace --all-targets --all-features -- -D warnings
