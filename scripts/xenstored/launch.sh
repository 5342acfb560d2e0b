#!/usr/bin/env bash
# Starts and stops Debian's xenstore daemons (Xen 4.17: C xenstored and oxenstored) on a unix
# socket, on a machine with no hypervisor, for pore's interop tests and benches.
#
#   launch.sh start SOCKET c|ocaml [DAEMON-ARGS...]
#       Starts the daemon in the background, waits (at most 10 s) until it answers on SOCKET,
#       prints its PID (and nothing else) on stdout. Its state lives in SOCKET.d/ (emptied first):
#         xen/         the stand-in for Xen (PORE_NOHV_DIR of nohv.c): evtchn FIFO, dom<N>.ring,
#                      dom<N>.port, dom<N>.gone; a test acts as guest N through these files
#         out.log      the daemon's stdout and stderr
#         trace.log    (C) every request and reply, unless PORE_XS_QUIET=1
#         oxenstored.conf, xenstored.log, access.log   (OCaml)
#       DAEMON-ARGS go to the daemon: for C e.g. -E 50 (nodes per domain), -S 2048 (node
#       size), -W 10 (watches), -t 5 (transactions), -A 5 (perms per node).
#   launch.sh stop PID
#       SIGTERM to PID if it is a xenstored or oxenstored, SIGKILL after 5 s.
#
# Environment:
#   PORE_XS_QUIET=1       no request trace (C) and error-level logs only (OCaml): for benches
#   PORE_XS_OCAML_CONF    extra "key = value" lines for oxenstored.conf (later keys win),
#                         e.g. $'quota-maxentity = 5\nquota-maxsize = 64'
#   PORE_XS_SHIM_DIR      where nohv.so is built (default: ${TMPDIR:-/tmp}/pore-nohv-<uid>)
#
# Needs: xen-utils-4.17 (the daemons), libxen-dev and gcc (to build nohv.so), xenstore-utils
# (to see that the daemon answers). Every socket client is dom0 to the daemon.
set -u
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
xenbin=/usr/lib/xen-4.17/bin

fail() {
  echo "launch.sh: $*" >&2
  exit 1
}

# Builds nohv.so once per version of nohv.c (the file name holds a hash of the source, so
# clones with different versions never share one). Several tests may start daemons at the same
# time: each compiles to a file of its own and renames it into place, so nobody loads half a file.
shim() {
  local dir=${PORE_XS_SHIM_DIR:-${TMPDIR:-/tmp}/pore-nohv-$(id -u)}
  local hash so
  hash=$(sha256sum "$here/nohv.c" | cut -c1-16) || fail "cannot read $here/nohv.c"
  so=$dir/nohv-$hash.so
  if [ ! -f "$so" ]; then
    mkdir -p "$dir" || fail "cannot create $dir"
    gcc -shared -fPIC -O2 -Wall -o "$so.$$" "$here/nohv.c" -ldl >&2 ||
      fail "cannot build nohv.so (gcc and libxen-dev are needed)"
    mv -f "$so.$$" "$so" || fail "cannot install $so"
  fi
  echo "$so"
}

answers() { # SOCKET
  [ -S "$1" ] && XENSTORED_PATH=$1 timeout 2 xenstore-exists / >/dev/null 2>&1
}

start() {
  local sock=${1:-} kind=${2:-}
  [ -n "$sock" ] && [ -n "$kind" ] || fail "usage: launch.sh start SOCKET c|ocaml [DAEMON-ARGS...]"
  shift 2
  case "$sock" in /*) ;; *) sock=$PWD/$sock ;; esac
  [ "${#sock}" -lt 108 ] || fail "socket path longer than sun_path allows: $sock"
  local so state pid
  so=$(shim) || exit 1
  state=$sock.d
  rm -rf "$state" && mkdir -p "$state/xen" || fail "cannot create $state"
  rm -f "$sock"
  export XENSTORED_RUNDIR=$state XENSTORED_PATH=$sock PORE_NOHV_DIR=$state/xen
  case "$kind" in
  c)
    local trace=(-T "$state/trace.log")
    [ "${PORE_XS_QUIET:-0}" = 1 ] && trace=()
    # -N: stay in the foreground. No -D: 4.17 builds its database only when it introduces dom0.
    (cd "$state" && LD_PRELOAD=$so exec "$xenbin/xenstored" -N "${trace[@]}" "$@") \
      >"$state/out.log" 2>&1 </dev/null &
    pid=$!
    ;;
  ocaml)
    local level=debug special=true
    [ "${PORE_XS_QUIET:-0}" = 1 ] && level=error special=false
    # Every log stays a file of the state directory: oxenstored rotates logs by renaming
    # them, which would turn /dev/null into a regular file.
    {
      echo "pid-file = $state/oxenstored.pid"
      echo "persistent = false"
      echo "perms-activate = true"
      echo "perms-watch-activate = true"
      echo "quota-activate = true"
      echo "xenstored-log-file = $state/xenstored.log"
      echo "xenstored-log-level = $level"
      echo "access-log-file = $state/access.log"
      echo "access-log-special-ops = $special"
      echo "xenstored-kva = /proc/xen/xsd_kva"
      echo "xenstored-port = /proc/xen/xsd_port"
      [ -z "${PORE_XS_OCAML_CONF:-}" ] || printf '%s\n' "$PORE_XS_OCAML_CONF"
    } >"$state/oxenstored.conf"
    (cd "$state" && LD_PRELOAD=$so exec "$xenbin/oxenstored" --no-fork \
      --config-file "$state/oxenstored.conf" "$@") >"$state/out.log" 2>&1 </dev/null &
    pid=$!
    ;;
  *) fail "the kind is c or ocaml, not '$kind'" ;;
  esac
  local _
  for _ in $(seq 1 100); do
    if ! kill -0 "$pid" 2>/dev/null; then
      cat "$state/out.log" >&2
      fail "$kind daemon exited while starting (state in $state)"
    fi
    if answers "$sock"; then
      echo "$pid"
      exit 0
    fi
    sleep 0.1
  done
  kill -KILL "$pid" 2>/dev/null
  fail "$kind daemon did not answer on $sock within 10 s (state in $state)"
}

stop() {
  local pid=${1:-} comm _
  [[ "$pid" =~ ^[0-9]+$ ]] || fail "usage: launch.sh stop PID"
  comm=$(cat "/proc/$pid/comm" 2>/dev/null) || exit 0 # already gone
  case "$comm" in xenstored | oxenstored) ;; *) fail "PID $pid is '$comm', not a xenstore daemon" ;; esac
  kill -TERM "$pid" 2>/dev/null || exit 0
  for _ in $(seq 1 50); do
    kill -0 "$pid" 2>/dev/null || exit 0
    # A zombie (its starting shell has exited) has stopped.
    grep -q '^State:[[:space:]]*Z' "/proc/$pid/status" 2>/dev/null && exit 0
    sleep 0.1
  done
  kill -KILL "$pid" 2>/dev/null
  exit 0
}

case "${1:-}" in
start) shift && start "$@" ;;
stop) shift && stop "$@" ;;
*)
  sed -n '2,25p' "$0" >&2
  exit 2
  ;;
esac
