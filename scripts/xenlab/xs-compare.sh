#!/bin/sh
# `pore xs` against xenstore-utils on a real Xen (busybox sh; in the lab's dom0 and domUs):
# the same commands through both must print the same stdout and exit with the same status
# (as scripts/phases/40-xenstore-interop.sh checks on unix sockets).
#
#   xs-compare.sh PORE BASE [EXTRA-CMD...]
#
# PORE is the pore binary; BASE a scratch node this domain may write (it is removed at the
# end). Each EXTRA-CMD ("read /x", "list /", ...) is compared too. The store is found as both
# tools find it ($XENSTORED_PATH, else xenstored's socket, else /dev/xen/xenbus).
# XS_COMPARE_QUICK=1 compares only a few commands (a second transport in the same domain).
# Exit status 0 when everything matched; the differences are printed.
pore=$1 base=$2
shift 2
failed=0
start=$(cut -d' ' -f1 /proc/uptime)

same() { # ARGS: `pore xs ARGS` and `xenstore-CMD REST` print and exit the same
    # shellcheck disable=SC2086 # the arguments are split on purpose
    a=$("$pore" xs $1 2>/dev/null; echo "rc=$?")
    # shellcheck disable=SC2086
    b=$("xenstore-${1%% *}" ${1#* } 2>/dev/null; echo "rc=$?")
    if [ "$a" = "$b" ]; then
        echo "xs-compare: same   $1 ($(echo "$b" | tail -n 1))"
    else
        echo "xs-compare: DIFFER $1"
        echo "$a" | sed 's/^/  pore xs:        /'
        echo "$b" | sed 's/^/  xenstore-utils: /'
        failed=1
    fi
}

xenstore-rm "$base" 2>/dev/null
long=$(printf 'x%.0s' $(seq 100))
"$pore" xs write "$base/b" hello "$base/c" 'x\ty\\z"q' "$base/b/d" 1 "$base/long" "$long" ||
    { echo "xs-compare: pore xs write failed"; exit 1; }
[ "$(xenstore-read "$base/b")" = hello ] || { echo "xs-compare: pore's write not seen by xenstore-read"; failed=1; }
xenstore-write "$base/e" 'from\x41utils' || failed=1
if [ -n "${XS_COMPARE_OWNER:-}" ]; then
    "$pore" xs chmod "$base/b" "n$XS_COMPARE_OWNER" r0 || failed=1
fi
if [ "${XS_COMPARE_QUICK:-0}" = 1 ]; then
    set -- "ls -p $base" "read $base/b $base/c" "exists $base/nope" "read $base/nope" "$@"
else
    set -- "ls $base" "ls -p $base" "ls -f $base" "ls -fp $base" "read $base/b $base/c" \
        "read -p $base/b" "read $base/e" "read $base/long" "list $base" "list -p $base" \
        "exists $base/b" "exists $base/nope" "read $base/nope" "list $base/nope" \
        "ls $base/nope" "rm $base/nope/x" "read $base/b $base/nope" "$@"
fi
for args in "$@"; do
    same "$args"
done
# A watch: the registration event, then (once it was printed) the change.
out=/tmp/xs-compare-watch.$$
timeout 60 "$pore" xs watch -n 2 "$base" >"$out" &
pid=$!
i=0
until [ -s "$out" ] || [ "$i" -ge 250 ]; do i=$((i + 1)); sleep 0.2; done
xenstore-write "$base/z" 1
wait "$pid"
rc=$?
w=$(cat "$out")
rm -f "$out"
want=$(printf '%s\n%s' "$base" "$base/z")
if [ "$w" = "$want" ] && [ "$rc" = 0 ]; then
    echo "xs-compare: same   watch -n 2 (events $base, $base/z)"
else
    echo "xs-compare: DIFFER watch -n 2 (exit $rc) printed:"; echo "$w" | sed 's/^/  /'
    failed=1
fi
"$pore" xs rm "$base" || failed=1
if xenstore-exists "$base"; then echo "xs-compare: pore xs rm left $base"; failed=1; fi
dmesg | grep -i segfault | sed 's/^/xs-compare: kernel: /'
echo "xs-compare: done in $(awk -v a="$start" -v b="$(cut -d' ' -f1 /proc/uptime)" 'BEGIN { printf "%.1f", b - a }') s"
exit "$failed"
