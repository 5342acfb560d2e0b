#!/usr/bin/env bash
# Real Xen in CI (docs/decisions.md D22): boots Xen 4.17 with a Debian Linux 6.1 PV dom0 under
# QEMU (software emulation) from Debian packages (scripts/xenlab), and runs there, as root:
#   boot 1 (dom0): a smoke check of the Xen devices and the real C xenstored, then every test
#                  binary of pore-backend-linux with PORE_REQUIRE_XEN=1, then `pore xs` against
#                  xenstore-utils (scripts/xenlab/xs-compare.sh: output and exit status, through
#                  the socket and /dev/xen/xenbus), then
#                  `pore demo --backend linux` (two processes of dom0, named endpoints) in both
#                  layouts, with a few MiB instead of the default 256 so the boot stays fast;
#   boot 2 (domU): a PV domU started with `xl create` greets dom0 through the real xenstored
#                  (domU writes, dom0 reads and answers, the domU reads the answer), then runs
#                  pore-backend-linux's unit tests (a dynamically linked Rust binary in a domU);
#                  then pore-backend-linux's test binaries named xen_domu* run in dom0, with
#                  PORE_REQUIRE_XEN=1 and PORE_XENLAB_DOMU=xenlab-domu: they start their own
#                  domU peers with it (`xenlab-domu start NAME DIR TIMEOUT ARGS`, see
#                  scripts/xenlab/xenlab-domu; the binaries are in /xenlab/payload/tests-domu/);
#                  then dom0 <-> domU straws (scripts/xenlab/straw-dom0.sh, straw-domu.sh, with
#                  the `pore` of boot 1, glibc, in both domains): through the real xenstored,
#                  domU listens then dom0 listens, v2 and LING, frames of 0 B to 1 MiB echoed
#                  and compared byte for byte; LING compatibility against seed-strawman (an
#                  independent C strawman, scripts/xenlab/seed-strawman.c) in the domU, both
#                  roles; then `xl destroy` of the domU while a straw
#                  streams: dom0's pore must report "peer gone" within a second of the first
#                  sign of the death in xenstore (the time since `xl destroy` began is printed)
#                  and hold no grant, mapping or port, no zombie domain, no node left.
#                  Boot 2 runs with one vCPU (several times faster on a busy 2-CPU machine).
# A lab that cannot be built or booted fails the phase: nothing here is skipped.
# Knobs: XENLAB_CACHE (downloads and images, default /var/cache/pore-xenlab), XENLAB_TIMEOUT
# (hard limit per boot in seconds, default 600: a busy 2-CPU machine needed 150 s for boot 2;
# a boot that times out is retried once).
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
cd "$root"
phase_start=$SECONDS
fail() { echo "60-xenlab: FAILED: $*" >&2; exit 1; }

for tool in qemu-system-x86_64 cpio readelf objcopy perl python3 apt-get; do
  command -v "$tool" >/dev/null || fail "$tool is missing (scripts/install-deps.sh installs it)"
done
cache=${XENLAB_CACHE:-/var/cache/pore-xenlab}
if [ -z "${XENLAB_CACHE:-}" ] && ! { [ -w /var/cache/pore-xenlab ] || [ -w /var/cache ]; }; then
  cache=${XDG_CACHE_HOME:-$HOME/.cache}/pore-xenlab # as build.sh does when not root
fi
lab=$cache/lab
limit=${XENLAB_TIMEOUT:-600}

t=$SECONDS
bash scripts/xenlab/build.sh "$lab" || fail "the lab could not be built"
echo "60-xenlab: lab ready in $((SECONDS - t)) s"

tmp=$(mktemp -d /tmp/pore-xenlab-phase.XXXXXX)
trap 'rm -rf "$tmp"' EXIT

# ---- the test binaries of pore-backend-linux (built here, run in dom0)
t=$SECONDS
cargo test -p pore-backend-linux --tests --no-run --message-format=json >"$tmp/cargo.json" ||
  fail "cargo could not build pore-backend-linux's tests"
mkdir -p "$tmp/tests" "$tmp/tests-domu"
python3 - "$tmp/cargo.json" "$tmp/tests" "$tmp/tests-domu" <<'EOF' || fail "cannot list the test binaries"
import json, os, shutil, sys
found = 0
for line in open(sys.argv[1]):
    try:
        msg = json.loads(line)
    except ValueError:
        continue
    if msg.get("reason") != "compiler-artifact" or not msg.get("executable"):
        continue
    if not msg["manifest_path"].endswith("/pore-backend-linux/Cargo.toml"):
        continue
    target = msg["target"]
    name = target["name"] if "lib" not in target["kind"] else "unit-" + target["name"]
    where = sys.argv[3] if name.startswith("xen_domu") else sys.argv[2]
    shutil.copy(msg["executable"], os.path.join(where, name))
    found += 1
if found == 0:
    sys.exit("no test binary found in cargo's output")
EOF
echo "60-xenlab: test binaries built in $((SECONDS - t)) s:" \
  "$(find "$tmp/tests" "$tmp/tests-domu" -type f -printf '%f ')"

# ---- the pore command, for `pore demo --backend linux` in dom0
t=$SECONDS
cargo build -p pore-cli --bin pore || fail "cargo could not build pore"
cp "${CARGO_TARGET_DIR:-$root/target}/debug/pore" "$tmp/pore" || fail "pore was not built where expected"
echo "60-xenlab: pore built in $((SECONDS - t)) s"

# ---- boot 1: dom0
cat >"$tmp/dom0.sh" <<'EOF'
#!/bin/sh
# Runs in the lab's dom0 (busybox sh) as root.
failed=""
echo "== smoke: Xen devices and the C xenstored"
for dev in evtchn gntalloc gntdev privcmd xenbus; do
    if [ -c "/dev/xen/$dev" ]; then echo "ok   /dev/xen/$dev"; else echo "FAIL /dev/xen/$dev missing"; failed="$failed smoke"; fi
done
if xenstore-write /pore-lab/smoke "hello from dom0" &&
    [ "$(xenstore-read /pore-lab/smoke)" = "hello from dom0" ] && xenstore-rm /pore-lab; then
    echo "ok   xenstore-write/read/rm"
else
    echo "FAIL xenstore-write/read/rm"; failed="$failed smoke"
fi
if xl list | grep -q '^Domain-0 '; then echo "ok   xl list"; else echo "FAIL xl list"; failed="$failed smoke"; fi

export PORE_REQUIRE_XEN=1 RUST_BACKTRACE=1
for test in tests/*; do
    name=${test#tests/}
    start=$(cut -d' ' -f1 /proc/uptime)
    echo "== $name (PORE_REQUIRE_XEN=1)"
    "./$test"
    rc=$?
    echo "== $name: exit status $rc after $(awk -v a="$start" -v b="$(cut -d' ' -f1 /proc/uptime)" 'BEGIN { printf "%.1f", b - a }') s"
    [ "$rc" = 0 ] || failed="$failed $name"
done
# pore xs against xenstore-utils in dom0: output and exit status of every command, through
# xenstored's socket and through /dev/xen/xenbus.
if sh ./xs-compare.sh ./pore /pore-lab-xs "list /" "read /local/domain/0/domid" \
    "ls /local/domain/0/nope"; then
    echo "ok   pore xs = xenstore-utils (socket)"
else
    echo "FAIL pore xs differs from xenstore-utils (socket)"; failed="$failed xs-socket"
fi
if XS_COMPARE_QUICK=1 XENSTORED_PATH=/dev/xen/xenbus sh ./xs-compare.sh ./pore /pore-lab-xs-dev \
    "read /local/domain/0/domid"; then
    echo "ok   pore xs = xenstore-utils (/dev/xen/xenbus)"
else
    echo "FAIL pore xs differs from xenstore-utils (/dev/xen/xenbus)"; failed="$failed xs-xenbus"
fi
# The demo between two processes of dom0: handshake, latency, throughput, close, and nothing
# left (each process checks its grants, mappings and ports; pore checks xenstore's nodes).
for run in "v2 --bytes 4194304 --round-trips 200" "ling --ling --bytes 1048576 --round-trips 100"; do
    set -- $run
    layout=$1
    shift
    start=$(cut -d' ' -f1 /proc/uptime)
    echo "== pore demo --backend linux $*"
    ./pore demo --backend linux "$@"
    rc=$?
    echo "== pore demo ($layout): exit status $rc after $(awk -v a="$start" -v b="$(cut -d' ' -f1 /proc/uptime)" 'BEGIN { printf "%.1f", b - a }') s"
    [ "$rc" = 0 ] || failed="$failed demo-$layout"
done
if [ -n "$failed" ]; then echo "== FAILED in dom0:$failed"; exit 1; fi
echo "== all passed in dom0"
EOF

t=$SECONDS
status=0
XENLAB_FILES="$tmp/tests $tmp/pore scripts/xenlab/xs-compare.sh" XENLAB_LOG="$cache/logs/dom0.log" \
  bash scripts/xenlab/run.sh "$lab" "$tmp/dom0.sh" "$limit" || status=$?
boot1=$((SECONDS - t))
echo "60-xenlab: boot 1 (dom0 tests): $boot1 s, status $status"
[ "$status" = 0 ] || fail "dom0 tests (status $status; console: $cache/logs/dom0.log)"

# ---- boot 2: a PV domU talks to dom0 through the real xenstored
mkdir -p "$tmp/domu/tests"
cp "$tmp/tests/unit-pore_backend_linux" "$tmp/domu/tests/"
cat >"$tmp/domu/run" <<'EOF'
#!/bin/sh
# Runs in the domU. Relative xenstore paths are under /local/domain/<our domid>/.
for dev in evtchn gntalloc gntdev xenbus; do
    [ -c "/dev/xen/$dev" ] || { echo "domU: /dev/xen/$dev missing"; exit 1; }
done
domid=$(xenstore-read domid) || { echo "domU: cannot read my domid"; exit 1; }
xenstore-write data/pore-lab/hello "hello from domU $domid" || exit 1
i=0
until [ "$(xenstore-read data/pore-lab/answer 2>/dev/null)" = "hello domU $domid" ]; do
    i=$((i + 1))
    [ "$i" -le 600 ] || { echo "domU: no answer from dom0 in 120 s"; exit 1; }
    sleep 0.2
done
echo "domU $domid: dom0 answered"
for test in tests/*; do
    echo "== domU: $test (PORE_REQUIRE_XEN=1)"
    PORE_REQUIRE_XEN=1 RUST_BACKTRACE=1 "./$test" || { echo "== domU: $test FAILED"; exit 1; }
done
EOF
chmod 755 "$tmp/domu/run"
cat >"$tmp/domu.sh" <<'EOF'
#!/bin/sh
# Runs in dom0: starts the domU, answers its greeting, waits for it to finish.
domid=$(xenlab-domu start hello ./domu 300) || exit 1
i=0
until [ "$(xenstore-read "/local/domain/$domid/data/pore-lab/hello" 2>/dev/null)" = "hello from domU $domid" ]; do
    i=$((i + 1))
    [ "$i" -le 600 ] || { echo "dom0: no greeting from domain $domid in 300 s"; xl destroy hello; xenlab-domu wait hello 5; exit 1; }
    sleep 0.5
done
echo "dom0: domain $domid greeted us"
xenstore-write "/local/domain/$domid/data/pore-lab/answer" "hello domU $domid" || exit 1
xenlab-domu wait hello 300 || exit 1
failed=""
export PORE_REQUIRE_XEN=1 PORE_XENLAB_DOMU=xenlab-domu RUST_BACKTRACE=1
for test in tests-domu/*; do
    [ -e "$test" ] || continue
    echo "== $test (PORE_REQUIRE_XEN=1, PORE_XENLAB_DOMU=xenlab-domu)"
    "./$test" || failed="$failed ${test#tests-domu/}"
done
echo "== dom0 <-> domU straws (straw-dom0.sh)"
XENLAB_STRAW_XS=0 sh ./straw-dom0.sh || failed="$failed straws"
if [ -n "$failed" ]; then echo "== FAILED:$failed"; exit 1; fi
EOF
python3 scripts/xenlab/frames.py "$tmp/frames.bin"
bash scripts/xenlab/build-c-peers.sh "$tmp" || fail "cannot build the lab's C peers"

t=$SECONDS
status=0
XENLAB_SMP=1 XENLAB_DOMU=1 XENLAB_LOG="$cache/logs/domu.log" \
  XENLAB_FILES="$tmp/domu $tmp/tests-domu $tmp/pore $tmp/seed-strawman $tmp/frames.bin scripts/xenlab/straw-dom0.sh scripts/xenlab/straw-domu.sh scripts/xenlab/xs-compare.sh" \
  bash scripts/xenlab/run.sh "$lab" "$tmp/domu.sh" "$limit" || status=$?
boot2=$((SECONDS - t))
echo "60-xenlab: boot 2 (dom0 <-> domU): $boot2 s, status $status"
[ "$status" = 0 ] || fail "dom0 <-> domU (status $status; console: $cache/logs/domu.log)"

echo "60-xenlab: ok; boots $((boot1 + boot2)) s (dom0 $boot1 s, domU $boot2 s), lab total $((SECONDS - phase_start)) s"
