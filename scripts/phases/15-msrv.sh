#!/usr/bin/env bash
# The declared MSRV (`rust-version` in the workspace Cargo.toml) is true: every crate of the
# workspace, all features, type-checks with that toolchain (a check, not a test: cheap).
# The toolchain is installed here if missing (`--profile minimal`, ~40 s). It has its own target
# directory, so the stable build cache is not churned.
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
cd "$root"
msrv=$(sed -n 's/^rust-version *= *"\([0-9.]*\)".*/\1/p' Cargo.toml)
[ -n "$msrv" ] || { echo "15-msrv: no rust-version in Cargo.toml" >&2; exit 1; }
rustup toolchain list | grep -q "^$msrv" || rustup toolchain install "$msrv" --profile minimal
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/tmp/pore-target}/msrv"
echo "15-msrv: cargo +$msrv check --workspace --all-features"
cargo "+$msrv" check --workspace --all-features
