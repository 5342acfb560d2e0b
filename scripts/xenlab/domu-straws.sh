#!/usr/bin/env bash
# On demand (`bash scripts/xenlab/domu-straws.sh`); phase 60 runs the same straws in CI with
# its debug `pore` and without the xs steps (see scripts/xenlab/README.md).
# dom0 <-> domU straws on real Xen (issue 12), in the lab of scripts/xenlab (Xen 4.17, Debian
# Linux 6.1 PV dom0 and domU under QEMU TCG). One boot: a PV domU runs a static `pore` (musl)
# and scripts/xenlab/straw-domu.sh, dom0 runs scripts/xenlab/straw-dom0.sh:
#   pore xs = xenstore-utils (output and exit codes) in dom0 (socket and /dev/xen/xenbus) and
#   in the domU (/dev/xen/xenbus); straws through the real C xenstored with the seed's full
#   handshake, domU listening then dom0 listening, v2 and forced LING, frames of 0 B to 1 MiB
#   both ways compared byte for byte; then `xl destroy` of the domU while a straw streams:
#   dom0 sees "peer gone" within a second of the first sign of the death in xenstore, holds
#   nothing, no zombie domain, no node left.
# Knobs: XENLAB_CACHE (default /var/cache/pore-xenlab), XENLAB_TIMEOUT (hard limit of the
# boot, default 900 s: generous for a busy 2-CPU machine; a boot that times out is retried
# once).
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
cd "$root"
phase_start=$SECONDS
fail() { echo "62-xenlab-domu: FAILED: $*" >&2; exit 1; }

for tool in qemu-system-x86_64 cpio readelf objcopy perl python3 apt-get; do
  command -v "$tool" >/dev/null || fail "$tool is missing (scripts/install-deps.sh installs it)"
done
cache=${XENLAB_CACHE:-/var/cache/pore-xenlab}
lab=$cache/lab
limit=${XENLAB_TIMEOUT:-900}

t=$SECONDS
bash scripts/xenlab/build.sh "$lab" || fail "the lab could not be built"
echo "62-xenlab-domu: lab ready in $((SECONDS - t)) s"

# ---- the static pore (one command, D21) and the frames
t=$SECONDS
musl=x86_64-unknown-linux-musl
cargo build --release -p pore-cli --target "$musl" || fail "cannot build the static pore"
pore="${CARGO_TARGET_DIR:-$root/target}/$musl/release/pore"
readelf -d "$pore" 2>/dev/null | grep -q '(NEEDED)' && fail "$pore is not static"
echo "62-xenlab-domu: static pore built in $((SECONDS - t)) s"

tmp=$(mktemp -d /tmp/pore-xenlab-domu.XXXXXX)
trap 'rm -rf "$tmp"' EXIT
cp "$pore" "$tmp/pore"
python3 scripts/xenlab/frames.py "$tmp/frames.bin"
bash scripts/xenlab/build-c-peers.sh "$tmp" || fail "cannot build the lab's C peers"

t=$SECONDS
status=0
# One vCPU: on a busy 2-CPU machine QEMU TCG boots dom0 and the domU several times faster
# with -smp 1 (payload start 5 s instead of 26 s, xl create 3 s instead of 18 s).
XENLAB_SMP=${XENLAB_SMP:-1} XENLAB_DOMU=1 XENLAB_LOG="$cache/logs/domu-straw.log" \
  XENLAB_FILES="$tmp/pore $tmp/seed-strawman $tmp/frames.bin scripts/xenlab/xs-compare.sh scripts/xenlab/straw-domu.sh" \
  bash scripts/xenlab/run.sh "$lab" scripts/xenlab/straw-dom0.sh "$limit" || status=$?
boot=$((SECONDS - t))
echo "62-xenlab-domu: boot (dom0 <-> domU straws, pore xs): $boot s, status $status"
[ "$status" = 0 ] || fail "dom0 <-> domU straws (status $status; console: $cache/logs/domu-straw.log)"
echo "62-xenlab-domu: ok; boot $boot s, phase total $((SECONDS - phase_start)) s"
