#!/usr/bin/env bash
# pore-xenstore's client against Debian's real daemons (C xenstored and oxenstored),
# started on unix sockets under a temp dir with scripts/xenstored/launch.sh, and
# stopped by PID whatever happens. Tests that need a daemon fail (not skip) here.
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
cd "$root"
start="$root/scripts/xenstored/launch.sh"

tmp=$(mktemp -d /tmp/pore-xs-interop.XXXXXX)
pids=()
cleanup() {
  for pid in "${pids[@]}"; do bash "$start" stop "$pid" >/dev/null 2>&1 || true; done
  rm -rf "$tmp"
}
trap cleanup EXIT INT TERM

# Build the test binary and the CLI first so that daemon start-up is not charged to cargo.
cargo test -p pore-xenstore --test interop --no-run
cargo build -p pore-cli
pore="${CARGO_TARGET_DIR:-$root/target}/debug/pore"

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

# `pore xs` against xenstore-utils on the same daemon: same output, same exit codes.
cli_check() { # SOCKET
  export XENSTORED_PATH="$1"
  "$pore" xs write /cli/b hello /cli/c 'x\ty\\z"q' /cli/b/d 1 /cli/long "$(printf 'x%.0s' $(seq 100))"
  "$pore" xs chmod /cli/b n0 r5
  local args tool
  for args in "ls /" "ls -p /" "ls -f /cli" "ls -fp /" "read /cli/b /cli/c" "read -p /cli/b" \
      "list /cli" "list -p /cli" "exists /cli/b" "exists /cli/nope" "read /cli/nope" \
      "list /cli/nope" "ls /cli/nope" "rm /cli/nope/x"; do
    tool="xenstore-${args%% *}"
    # shellcheck disable=SC2086
    a=$("$pore" xs $args 2>/dev/null; echo "rc=$?")
    # shellcheck disable=SC2086
    b=$($tool ${args#* } 2>/dev/null; echo "rc=$?")
    if [ "$a" != "$b" ]; then
      echo "pore xs $args differs from $tool on $1:"; diff <(echo "$a") <(echo "$b") || true
      return 1
    fi
  done
  local w
  w=$( (timeout 5 "$pore" xs watch -n 2 /cli & sleep 0.3; xenstore-write /cli/z 1; wait) )
  [ "$w" = $'/cli\n/cli/z' ] || { echo "pore xs watch printed: $w"; return 1; }
  "$pore" xs rm /cli
  echo "40-xenstore-interop: pore xs matches xenstore-utils on $1"
}
if [ "$status" = 0 ]; then
  cli_check "$tmp/c.sock" || status=1
  cli_check "$tmp/o.sock" || status=1
fi
# pore-xenstore's example client (examples/xs_client.rs) on both daemons.
if [ "$status" = 0 ]; then
  cargo build -q -p pore-xenstore --example xs_client
  for sock in "$tmp/c.sock" "$tmp/o.sock"; do
    timeout 20 "${CARGO_TARGET_DIR:-$root/target}/debug/examples/xs_client" "$sock" >/dev/null ||
      { echo "40-xenstore-interop: examples/xs_client failed on $sock"; status=1; }
  done
  [ "$status" != 0 ] || echo "40-xenstore-interop: examples/xs_client ran on both daemons"
fi
if [ "$status" != 0 ]; then
  echo "--- C xenstored out.log"; tail -n 20 "$tmp/c.sock.d/out.log" 2>/dev/null || true
  echo "--- oxenstored out.log"; tail -n 20 "$tmp/o.sock.d/out.log" 2>/dev/null || true
fi
exit "$status"
