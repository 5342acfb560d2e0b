#!/usr/bin/env bash
# The no_std crates build for a bare-metal target.
set -euo pipefail
cargo build --target x86_64-unknown-none -p pore-core --no-default-features
cargo build --target x86_64-unknown-none -p pore-ring
cargo build --target x86_64-unknown-none -p pore-xenstore --no-default-features
cargo build --target x86_64-unknown-none -p pore-straw --no-default-features
