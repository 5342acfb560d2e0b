#!/usr/bin/env bash
# API docs build without broken links or missing docs.
set -euo pipefail
RUSTDOCFLAGS="-D warnings" cargo doc --workspace --no-deps --all-features
