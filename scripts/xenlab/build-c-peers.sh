#!/usr/bin/env bash
# Builds the lab's C peers, statically linked (they run in domUs, whose initramfs has no
# Xen libraries), from Debian's libxen-dev (scripts/install-deps.sh installs it):
#   seed-strawman   an independent C implementation of the seed's strawman (LING compatibility)
#   vchan-bench     a libxenvchan sender/receiver (the throughput bench against libxenvchan)
#
#   bash scripts/xenlab/build-c-peers.sh OUTDIR
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
out=${1:?usage: build-c-peers.sh OUTDIR}
mkdir -p "$out"
[ -e /usr/include/xenstore.h ] || { echo "build-c-peers: libxen-dev is missing" >&2; exit 1; }
libs=(-lxenvchan -lxenstore -lxengnttab -lxenevtchn -lxentoolcore -lxentoollog -lpthread)
for peer in seed-strawman vchan-bench; do
  [ -e "$here/$peer.c" ] || continue
  gcc -O2 -Wall -Wextra -Werror -static -o "$out/$peer" "$here/$peer.c" "${libs[@]}"
done
