#!/usr/bin/env bash
# API docs build without broken links or missing docs: with stable rustdoc, and as docs.rs builds
# them (nightly, every feature, `--cfg docsrs`: each crate's `doc_cfg` labels feature-gated items
# with their feature; see `[package.metadata.docs.rs]` in the crates' Cargo.toml).
set -euo pipefail
RUSTDOCFLAGS="-D warnings" cargo doc --workspace --no-deps --all-features
# Its own target directory: cargo wipes a doc directory that another toolchain wrote.
CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/tmp/pore-target}/docsrs" \
  RUSTDOCFLAGS="--cfg docsrs -D warnings" cargo +nightly doc --workspace --no-deps --all-features \
  --exclude pore-benches --exclude pore-cli
