#!/usr/bin/env bash
# pore's xenstored (pore-xenstore::server) against Debian's real clients and its
# C xenstored: golden traces replayed byte for byte, xenstore-utils and a libxenstore C
# program (compiled here with gcc) on our server and on C xenstored with identical
# output, a random differential test (sockets + a guest ring, transactions, watches), and
# `pore xenstored` itself (xenstore-utils against it, clean SIGTERM shutdown).
# PORE_REQUIRE_INTEROP=1: a missing Debian tool or daemon fails the phase (no skips).
# Every daemon is stopped by PID in the trap.
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
cd "$root"
export PORE_REQUIRE_INTEROP=1

for tool in xenstore-write xenstore-read xenstore-ls xenstore-list xenstore-rm \
  xenstore-chmod xenstore-exists xenstore-watch gcc; do
  command -v "$tool" >/dev/null || { echo "45-xenstored-interop: $tool missing" >&2; exit 1; }
done
[ -x /usr/lib/xen-4.17/bin/xenstored ] || { echo "45-xenstored-interop: C xenstored missing" >&2; exit 1; }
[ -f /usr/include/xenstore.h ] || { echo "45-xenstored-interop: libxen-dev missing" >&2; exit 1; }

tmp=$(mktemp -d /tmp/pore-xsd-interop.XXXXXX)
pore_pid=""
cleanup() {
  if [ -n "$pore_pid" ] && kill -0 "$pore_pid" 2>/dev/null; then
    kill -KILL "$pore_pid" 2>/dev/null || true
  fi
  rm -rf "$tmp"
}
trap cleanup EXIT INT TERM

# The tests start (and stop, by PID) C xenstored themselves through scripts/xenstored/launch.sh.
cargo test -p pore-xenstore --test server_golden --test server_utils \
  --test server_libxenstore --test server_differential -- --test-threads=2

# `pore xenstored` in the foreground, driven by xenstore-utils, stopped with SIGTERM.
cargo build -p pore-cli
pore="${CARGO_TARGET_DIR:-$root/target}/debug/pore"
"$pore" xenstored --help >/dev/null || { echo "45-xenstored-interop: 'pore xenstored' is not wired" >&2; exit 1; }
sock="$tmp/sock"
"$pore" -v xenstored --socket "$sock" 2>"$tmp/log" &
pore_pid=$!
for _ in $(seq 1 100); do
  [ -S "$sock" ] && break
  sleep 0.05
done
[ -S "$sock" ] || { cat "$tmp/log" >&2; echo "45-xenstored-interop: no socket" >&2; exit 1; }
export XENSTORED_PATH="$sock"
timeout 5 xenstore-write /phase45/a hello /phase45/b world
[ "$(timeout 5 xenstore-read /phase45/a /phase45/b)" = "$(printf 'hello\nworld')" ]
timeout 5 xenstore-chmod /phase45/a n0 r5
timeout 5 xenstore-ls -p /phase45 | grep -q 'a = "hello".*(n0,r5)'
timeout 5 xenstore-rm /phase45
! timeout 5 xenstore-exists /phase45
kill -TERM "$pore_pid"
status=0
for _ in $(seq 1 50); do
  kill -0 "$pore_pid" 2>/dev/null || break
  sleep 0.1
done
if kill -0 "$pore_pid" 2>/dev/null; then
  echo "45-xenstored-interop: pore xenstored ignored SIGTERM for 5 s" >&2
  exit 1
fi
wait "$pore_pid" || status=$?
pore_pid=""
[ "$status" = 0 ] || { cat "$tmp/log" >&2; echo "45-xenstored-interop: exit status $status" >&2; exit 1; }
[ ! -e "$sock" ] || { echo "45-xenstored-interop: socket left behind" >&2; exit 1; }
echo "45-xenstored-interop: ok"
