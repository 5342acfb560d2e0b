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

# The Xen lab (scripts/xenlab, phase 60): QEMU, and the tools build.sh/run.sh use on the host
# (busybox, the kernel, Xen and its tools are downloaded by the lab itself, not installed).
need_lab=()
for pkg in qemu-system-x86 cpio binutils perl xz-utils; do
  dpkg -s "$pkg" >/dev/null 2>&1 || need_lab+=("$pkg")
done
if [ "${#need_lab[@]}" -gt 0 ]; then
  echo "install-deps: apt-get install ${need_lab[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >/dev/null
  # An image may already hold a newer qemu-utils (bookworm-backports) that Breaks bookworm's
  # qemu-system-common; then install qemu-utils at the version of the qemu-system-x86 we get.
  qemu_pin=()
  if [[ " ${need_lab[*]} " == *" qemu-system-x86 "* ]] && dpkg -s qemu-utils >/dev/null 2>&1; then
    want=$(apt-cache policy qemu-system-x86 | sed -n 's/^ *Candidate: //p')
    have=$(dpkg-query -W -f '${Version}' qemu-utils)
    if [ -n "$want" ] && [ "$want" != "$have" ] &&
      apt-cache madison qemu-utils | awk -F'|' '{ gsub(/ /, "", $2); print $2 }' | grep -qxF "$want"; then
      echo "install-deps: qemu-utils $have -> $want (to match qemu-system-x86)"
      qemu_pin=(--allow-downgrades "qemu-utils=$want")
    fi
  fi
  apt-get install -y -qq "${qemu_pin[@]}" "${need_lab[@]}" >/dev/null
fi

have_component() { rustup component list --installed --toolchain "$1" 2>/dev/null | grep -q "^$2"; }
for comp in rustfmt clippy; do
  have_component stable "$comp" || rustup component add --toolchain stable "$comp"
done
# Nightly: docs as docs.rs builds them (phase 25), miri (50) and the fuzzers (70).
rustup toolchain list | grep -q '^nightly' || rustup toolchain install nightly --profile minimal
for comp in miri rust-src; do
  have_component nightly "$comp" || rustup component add --toolchain nightly "$comp"
done
rustup target list --installed --toolchain stable | grep -q '^x86_64-unknown-none$' \
  || rustup target add --toolchain stable x86_64-unknown-none
# The static pore for lab domUs (phase 62): cargo build --release -p pore-cli --target x86_64-unknown-linux-musl
rustup target list --installed --toolchain stable | grep -q '^x86_64-unknown-linux-musl$' \
  || rustup target add --toolchain stable x86_64-unknown-linux-musl
command -v cargo-fuzz >/dev/null 2>&1 || cargo install --locked -q cargo-fuzz
exit 0
