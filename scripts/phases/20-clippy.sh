#!/usr/bin/env bash
# missing_docs is a workspace lint (warn), so -D warnings makes it an error here.
set -euo pipefail
cargo clippy --workspace --all-targets --all-features -- -D warnings
