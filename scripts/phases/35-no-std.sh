#!/usr/bin/env bash
# The no_std crates build for a bare-metal target with no default features (what a guest
# kernel gets); phase 32 runs their unit tests that way on the host.
set -euo pipefail
cargo build --target x86_64-unknown-none -p pore-core --no-default-features
cargo build --target x86_64-unknown-none -p pore-ring --no-default-features
cargo build --target x86_64-unknown-none -p pore-xenstore --no-default-features
cargo build --target x86_64-unknown-none -p pore-straw --no-default-features
cargo build --target x86_64-unknown-none -p pore-backend-baremetal --no-default-features
