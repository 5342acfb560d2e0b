#!/usr/bin/env bash
# pore-xenstore's client against Debian's real daemons (C xenstored and oxenstored),
# started on unix sockets under a temp dir with the reference kit (DESIGN.md D20), and
# stopped by PID whatever happens. Tests that need a daemon fail (not skip) here.
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
cd "$root"
shared="${PORE_SHARED:-$(cd "$root/.." && pwd)/shared}"
kit="$shared/reference/xenstored"
start="$kit/start-xenstored.sh"
[ -x "$start" ] || [ -f "$start" ] || { echo "40-xenstore-interop: $start missing" >&2; exit 1; }

tmp=$(mktemp -d /tmp/pore-xs-interop.XXXXXX)
export FAKEXEN_BUILD_DIR="$tmp/shim"
pids=()
cleanup() {
  for pid in "${pids[@]}"; do bash "$start" stop "$pid" >/dev/null 2>&1 || true; done
  rm -rf "$tmp"
}
trap cleanup EXIT INT TERM

# Build the test binary first so that daemon start-up is not charged to cargo.
cargo test -p pore-xenstore --test interop --no-run

# Both daemons log every request by default; keep that (it is cheap at this size).
c_pid=$(bash "$start" start "$tmp/c.sock" c)
pids+=("$c_pid")
o_pid=$(bash "$start" start "$tmp/o.sock" ocaml)
pids+=("$o_pid")
echo "40-xenstore-interop: C xenstored pid $c_pid, oxenstored pid $o_pid"

export PORE_XENSTORED_C_SOCKET="$tmp/c.sock"
export PORE_XENSTORED_OCAML_SOCKET="$tmp/o.sock"
export PORE_REQUIRE_INTEROP=1
status=0
cargo test -p pore-xenstore --test interop -- --test-threads=4 || status=$?
if [ "$status" != 0 ]; then
  echo "--- C xenstored out.log"; tail -n 20 "$tmp/c.sock.d/out.log" 2>/dev/null || true
  echo "--- oxenstored out.log"; tail -n 20 "$tmp/o.sock.d/out.log" 2>/dev/null || true
fi
exit "$status"
