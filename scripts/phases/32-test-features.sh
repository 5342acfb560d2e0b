#!/usr/bin/env bash
# Phase 30 tests everything with --all-features; here the crates whose features change what they
# are are tested as a user gets them: with their default features, one crate at a time (a
# workspace-wide run would unify the features of every member and test nothing new), and the
# no_std cores' unit tests with no default features at all. Crates whose default is all their
# features (pore-xenstore, pore-backend-sim, pore-backend-linux, pore-cli) are not repeated.
set -euo pipefail
for crate in pore-core pore-ring pore-straw; do
  echo "32-test-features: $crate, default features"
  cargo test -p "$crate" --no-fail-fast
done
for crate in pore-core pore-xenstore pore-straw; do
  echo "32-test-features: $crate --no-default-features (unit tests)"
  cargo test -p "$crate" --no-default-features --lib
done
echo "32-test-features: pore-backend-sim --no-default-features (check)"
cargo check -p pore-backend-sim --no-default-features
