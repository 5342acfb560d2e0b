#!/usr/bin/env bash
# On demand, not in CI: straw throughput dom0 -> domU against libxenvchan, moving the same
# bytes between the same two domains in the same boot of the lab (Xen 4.17 under QEMU TCG:
# absolute figures mean little, the ratios are the point).
#
#   bash scripts/xenlab/vchan-bench.sh
#
# For 64 B and 64 KiB messages, dom0 sends and the domU receives, rounds interleaved:
#   straw v2   `pore straw connect --generate N --frame-size S` into `pore straw listen --sink`,
#              v2 with 16 data pages: a 64 KiB ring each way
#   straw LING the seed's 8-page layout (16 376 B each way)
#   vchan      scripts/xenlab/vchan-bench.c: libxenvchan client writes S bytes at a time into
#              a server with 64 KiB rings (the same size as straw v2), which receives one
#              message of S bytes per call (libxenvchan_recv)
#   proxy      Debian's vchan-socket-proxy (client, stdin) fed by `dd bs=S`, into the same
#              64 KiB-ring vchan server
# Each receiver times its first message to its last (pore: to the end of the stream, which
# follows the last frame). Binaries: a release `pore` (glibc; VCHAN_BENCH_MUSL=1 for the static
# musl one) and the static C peers (scripts/xenlab/build-c-peers.sh).
# Knobs: XENLAB_CACHE, XENLAB_TIMEOUT (default 900 s), VCHAN_BENCH_ROUNDS (3),
# VCHAN_BENCH_MIB (MiB per cell, 8), VCHAN_BENCH_MUSL.
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
cd "$root"
fail() { echo "vchan-bench: FAILED: $*" >&2; exit 1; }
cache=${XENLAB_CACHE:-/var/cache/pore-xenlab}
lab=$cache/lab
bash scripts/xenlab/build.sh "$lab" || fail "the lab could not be built"
# pore as most users run it: glibc (run.sh copies the libraries it needs into both domains).
# VCHAN_BENCH_MUSL=1 uses the static musl pore of domU payloads instead: musl's allocator
# returns freed memory to the kernel, and in a PV guest every page-table change it causes is a
# hypercall (a per-frame cost that shows at 64 B).
if [ "${VCHAN_BENCH_MUSL:-0}" = 1 ]; then
  musl=x86_64-unknown-linux-musl
  cargo build --release -p pore-cli --target "$musl" || fail "cannot build the static pore"
  pore="${CARGO_TARGET_DIR:-$root/target}/$musl/release/pore"
else
  cargo build --release -p pore-cli || fail "cannot build pore"
  pore="${CARGO_TARGET_DIR:-$root/target}/release/pore"
fi
tmp=$(mktemp -d /tmp/pore-vchan-bench.XXXXXX)
trap 'rm -rf "$tmp"' EXIT
cp "$pore" "$tmp/pore"
bash scripts/xenlab/build-c-peers.sh "$tmp" || fail "cannot build the lab's C peers"
proxy=/usr/lib/xen-4.17/bin/vchan-socket-proxy
[ -x "$proxy" ] || fail "$proxy is missing (xen-utils-4.17; scripts/install-deps.sh installs it)"
cp "$proxy" "$tmp/vchan-socket-proxy"
printf 'ROUNDS=%s\nMIB=%s\n' "${VCHAN_BENCH_ROUNDS:-3}" "${VCHAN_BENCH_MIB:-8}" >"$tmp/vchan-bench.conf"
XENLAB_SMP=${XENLAB_SMP:-2} XENLAB_DOMU=1 XENLAB_LOG="$cache/logs/vchan-bench.log" \
  XENLAB_FILES="$tmp/pore $tmp/vchan-bench $tmp/vchan-socket-proxy $tmp/vchan-bench.conf scripts/xenlab/vchan-domu.sh" \
  bash scripts/xenlab/run.sh "$lab" scripts/xenlab/vchan-dom0.sh "${XENLAB_TIMEOUT:-900}" ||
  fail "the bench boot failed (console: $cache/logs/vchan-bench.log)"
