#!/bin/sh
# The domU's half of the dom0 <-> domU straw checks (scripts/xenlab/straw-dom0.sh is the other
# half; it copies this file into the domU's payload as `run`, next to a static `pore`,
# frames.bin and xs-compare.sh). Busybox sh, as root, in /xenlab/payload.
#
# Steps are driven through xenstore, in our own tree (relative paths are under
# /local/domain/<us>/): dom0 writes data/xenlab/go-NAME when its listener NAME is up; we write
# data/xenlab/res-NAME = "ok" or "fail: why" when our part of step NAME is over.
#   xa, xb   we listen (v2, then LING) and echo every frame; dom0 connects and compares
#   xc, xd   dom0 listens (v2, then LING) and echoes; we connect, send frames.bin, compare
#   xe       seed-strawman (an independent C strawman: LING keys only) listens and echoes;
#            dom0's pore connects offering v2 and must fall back to LING
#   xf       dom0's pore listens (offering v2) and echoes; seed-strawman connects, sends
#            frames.bin and checks every frame that comes back
#   xs       pore xs against xenstore-utils here, over /dev/xen/xenbus
#   e1       a straw left streaming (we listen on e1, v2, and echo) until dom0 destroys
#            this domain
now() { read -r up _ </proc/uptime; echo "$up"; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'; }
note() { echo "straw-domu: [$(now) s] $*"; }
res() { # NAME RESULT
    note "$1: $2"
    xenstore-write "data/xenlab/res-$1" "$2"
}
wait_go() { # NAME: dom0's listener NAME is up (a deadline of 300 s)
    read -r up _ </proc/uptime
    end=$((${up%.*} + 300))
    until xenstore-exists "data/xenlab/go-$1" 2>/dev/null; do
        read -r up _ </proc/uptime
        [ "${up%.*}" -lt "$end" ] || return 1
        sleep 0.2
    done
}

mode=${1:-} # "noxs": leave out the xs step
domid=$(xenstore-read domid) || { note "cannot read our domid"; exit 1; }
note "domain $domid, pore $(./pore --version 2>&1)"
export RUST_BACKTRACE=1

# ---- xa, xb: we listen and echo
for step in "xa v2" "xb ling"; do
    set -- $step
    start=$(now)
    if ./pore straw listen --from 0 --name "$1" --layout "$2" --echo --timeout 300; then
        res "$1" "ok ($2, listener, $(awk -v a="$start" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }') s)"
    else
        res "$1" "fail: pore straw listen --layout $2 exited $?"
    fi
done

# ---- xc, xd: we connect to dom0 and compare what comes back
for step in "xc v2" "xd ling"; do
    set -- $step
    waited=$(now)
    note "$1: waiting for dom0's listener"
    if ! wait_go "$1"; then res "$1" "fail: dom0 never listened (no go-$1 after $(since "$waited") s)"; continue; fi
    start=$(now)
    ./pore straw connect 0 --name "$1" --layout "$2" --framed --timeout 60 <frames.bin >"out.$1" 2>"err.$1"
    rc=$?
    cat "err.$1"
    took=$(awk -v a="$start" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }')
    if [ "$rc" != 0 ]; then
        res "$1" "fail: pore straw connect --layout $2 exited $rc"
    elif ! cmp frames.bin "out.$1"; then
        res "$1" "fail: the frames came back different"
    elif ! grep -q "connected to .*($( [ "$2" = ling ] && echo Ling || echo V2)" "err.$1"; then
        res "$1" "fail: not the $2 layout: $(cat "err.$1")"
    else
        res "$1" "ok ($2, connector, $(wc -c <frames.bin) bytes there and back in $took s)"
    fi
    rm -f "out.$1"
done

# ---- xe, xf: the seed's strawman in C against dom0's pore (seed endpoints: data/straw)
start=$(now)
if ./seed-strawman listen 0 120; then
    res xe "ok (seed-strawman listened and echoed, $(since "$start") s)"
else
    res xe "fail: seed-strawman listen exited $?"
fi
note "xf: waiting for dom0's listener"
if ! wait_go xf; then
    res xf "fail: dom0 never listened"
else
    start=$(now)
    if ./seed-strawman connect 0 frames.bin 120; then
        res xf "ok (seed-strawman connected, every frame came back, $(since "$start") s)"
    else
        res xf "fail: seed-strawman connect exited $?"
    fi
fi

# ---- xs: pore xs and xenstore-utils through /dev/xen/xenbus agree (unless dom0 said noxs)
if [ "$mode" = noxs ]; then
    note "xs: left out"
elif XS_COMPARE_OWNER=$domid sh ./xs-compare.sh ./pore "/local/domain/$domid/data/xs-compare" \
    "list /" "read domid" "exists /local/domain/0/nope" "read /local/domain/0/nope"; then
    res xs ok
else
    res xs "fail: pore xs differs from xenstore-utils"
fi

# ---- e1: a straw streaming until we are destroyed
./pore straw listen --from 0 --name e1 --echo --timeout 300 &
note "waiting to be destroyed"
sleep 600
note "still alive after 600 s"
exit 1
