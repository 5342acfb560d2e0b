#!/usr/bin/env bash
# Installs what a fresh machine lacks; idempotent and quiet when everything is present.
# Never runs `rustup update` (D22); adds only missing components/targets.
# (Dn: decision n of docs/decisions.md.)
set -euo pipefail

need_apt=()
for pkg in xen-utils-4.17 xenstore-utils libxen-dev gcc python3; do
  dpkg -s "$pkg" >/dev/null 2>&1 || need_apt+=("$pkg")
done
if [ "${#need_apt[@]}" -gt 0 ]; then
  echo "install-deps: apt-get install ${need_apt[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >/dev/null
  apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi

have_component() { rustup component list --installed --toolchain "$1" 2>/dev/null | grep -q "^$2"; }
for comp in rustfmt clippy; do
  have_component stable "$comp" || rustup component add --toolchain stable "$comp"
done
if rustup toolchain list | grep -q '^nightly'; then
  for comp in miri rust-src; do
    have_component nightly "$comp" || rustup component add --toolchain nightly "$comp"
  done
fi
rustup target list --installed --toolchain stable | grep -q '^x86_64-unknown-none$' \
  || rustup target add --toolchain stable x86_64-unknown-none
command -v cargo-fuzz >/dev/null 2>&1 || cargo install --locked -q cargo-fuzz
exit 0
