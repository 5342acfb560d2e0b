#!/bin/sh
# dom0 <-> domU straws on real Xen (issue 12), run in the lab's dom0 as the payload of
# scripts/xenlab/run.sh with XENLAB_DOMU=1 (busybox sh, as root, in /xenlab/payload).
# Needs next to it: a static `pore` (musl), a static seed-strawman, frames.bin (frames as `pore straw --framed` reads
# them: 4-byte little-endian length + bytes, 0 B to 1 MiB), xs-compare.sh, straw-domu.sh.
#
# One PV domU runs straw-domu.sh with the same static pore; the two sides step through
# xenstore (see straw-domu.sh). Every straw goes through the real C xenstored with the seed's
# full handshake (`pore straw`, raw format):
#   xs       pore xs = xenstore-utils in dom0 (xenstored's socket, then /dev/xen/xenbus)
#            and in the domU (/dev/xen/xenbus)
#   xa, xb   domU listens (v2, then forced LING) and echoes; dom0 connects, sends frames.bin,
#            compares what comes back byte for byte
#   xc, xd   dom0 listens (v2, then LING) and echoes; the domU connects and compares
#   xe, xf   LING compatibility against seed-strawman (scripts/xenlab/seed-strawman.c, an
#            independent C implementation of the seed's strawman that writes none of pore's
#            keys: no format, straw-layouts, straw-eof, narrowing), seed endpoints on both
#            sides: it listens in the domU and dom0's pore connects offering v2 (must get LING);
#            then dom0's pore listens offering v2 and it connects; frames.bin both ways
#   destroy  a straw streaming (dom0 opener on e1/v2, mapping the domU's pages); `xl destroy`
#            the domU: dom0's straw must report "peer gone" within a second of the first sign
#            of the death dom0 can see (the domU's directory going, or @releaseDomain; the
#            time from the start of `xl destroy` is measured and reported too: it includes
#            libxl's own work), exit without holding grants, mappings or ports, and leave no
#            zombie domain and none of its xenstore nodes behind. (A second straw with dom0 as the
#            LING listener streaming at the same time hung the lab: see the phase script.)
# XENLAB_STRAW_XS=0 leaves out the xs steps (CI, scripts/phases/60-xenlab.sh, does: they take
# time and scripts/phases/45-xenstored-interop.sh compares pore xs with xenstore-utils already).
# Prints one "straw-dom0: PASS|FAIL step ..." line per step; exit status 0 if all passed.
PATH=/xenlab/payload:$PATH
now() { read -r up _ </proc/uptime; echo "$up"; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.2f", b - a }'; }
note() { echo "straw-dom0: [$(now) s] $*"; }
failed=""
pass() { note "PASS $*"; }
fail() { note "FAIL $*"; failed="$failed $1"; }
secs() { read -r up _ </proc/uptime; echo "${up%.*}"; }
wait_node() { # PATH SECONDS: until the node exists (a deadline, not a count of tries: a
    # crashing `sleep` must not shorten the wait)
    end=$(($(secs) + $2))
    until xenstore-exists "$1" 2>/dev/null; do
        [ "$(secs)" -lt "$end" ] || return 1
        sleep 0.2
    done
}
domu_result() { # NAME SECONDS: the domU's result of step NAME
    wait_node "$dom/data/xenlab/res-$1" "$2" || { echo "no result from the domU"; return 1; }
    xenstore-read "$dom/data/xenlab/res-$1"
}
span() { # FROM TO: seconds between two uptimes, "?" without FROM
    if [ -n "$1" ]; then awk -v a="$1" -v b="$2" 'BEGIN { printf "%.3f", b - a }'; else echo "?"; fi
}
stamp() { # prefixes each line with dom0's uptime
    while IFS= read -r line; do echo "$(now) $line"; done
}
export RUST_BACKTRACE=1
ulimit -c 0
judge() { # NAME RC LAYOUT DOMU-RESULT MESSAGE: step NAME passed if our pore exited 0, what
    # came back (out.NAME, when there is one) is frames.bin, pore said it connected with LAYOUT
    # (when given) and the domU's result is ok
    if [ "$2" != 0 ]; then
        fail "$1" "pore straw exited $2; domU: $4"
    elif [ -e "out.$1" ] && ! cmp frames.bin "out.$1"; then
        fail "$1" "the frames came back different"
    elif [ -n "$3" ] && ! grep -q "connected to .*($3" "err.$1"; then
        fail "$1" "not the $3 layout"
    elif [ "${4#ok}" = "$4" ]; then
        fail "$1" "domU: $4"
    else
        pass "$1" "$5; domU: $4"
    fi
    rm -f "out.$1"
}

mkdir -p straw-domu.d
cp straw-domu.sh straw-domu.d/run
cp pore seed-strawman frames.bin xs-compare.sh straw-domu.d/
chmod 755 straw-domu.d/run
t0=$(now)
xs=${XENLAB_STRAW_XS:-1}
noxs=""
[ "$xs" = 0 ] && noxs=noxs
XENLAB_DOMU_MEMORY=${XENLAB_DOMU_MEMORY:-192} xenlab-domu start straw ./straw-domu.d 900 $noxs >domid || {
    fail start "xenlab-domu start"
    exit 1
}
domid=$(cat domid)
dom=/local/domain/$domid
note "domU straw is domain $domid (xl create took $(since "$t0") s)"

# ---- xs in dom0 while the domU boots
if [ "$xs" = 0 ]; then
    :
elif sh ./xs-compare.sh ./pore /pore-lab-xs "list /" "read /local/domain/0/domid" \
    "ls /local/domain/0/nope"; then
    pass xs-dom0-socket
else
    fail xs-dom0-socket
fi
if [ "$xs" = 0 ]; then
    :
elif XS_COMPARE_QUICK=1 XENSTORED_PATH=/dev/xen/xenbus sh ./xs-compare.sh ./pore \
    /pore-lab-xs-dev "read /local/domain/0/domid"; then
    pass xs-dom0-xenbus
else
    fail xs-dom0-xenbus
fi

# ---- xa, xb: the domU listens, we connect and compare
for step in "xa v2 V2" "xb ling Ling"; do
    set -- $step
    if ! wait_node "$dom/data/straw-$1" 240; then
        fail "$1" "the domU's listener $1 never came up"
        continue
    fi
    start=$(now)
    ./pore straw connect "$domid" --name "$1" --layout "$2" --framed --timeout 60 \
        <frames.bin >"out.$1" 2>"err.$1"
    rc=$?
    took=$(since "$start")
    sed 's/^/  | /' "err.$1"
    judge "$1" "$rc" "$3" "$(domu_result "$1" 30)" \
        "domU listens ($2), dom0 connects: $(wc -c <frames.bin) bytes there and back in $took s"
done

# ---- xc, xd: we listen and echo, the domU connects and compares
for step in "xc v2" "xd ling"; do
    set -- $step
    ./pore straw listen --from "$domid" --name "$1" --layout "$2" --echo --timeout 240 2>"err.$1" &
    pid=$!
    if wait_node "/local/domain/0/data/straw-$1" 120; then
        xenstore-write "$dom/data/xenlab/go-$1" 1
        note "$1: listening, told the domU"
    else
        note "$1: our listener's node never appeared"
    fi
    wait "$pid"
    rc=$?
    sed 's/^/  | /' "err.$1"
    judge "$1" "$rc" "" "$(domu_result "$1" 60)" "dom0 listens ($2) and echoes"
done

# ---- xe: seed-strawman listens in the domU, we connect offering v2 (the seed knows only LING)
if ! wait_node "$dom/data/straw" 240; then
    fail xe "seed-strawman's data/straw never came up"
else
    start=$(now)
    ./pore straw connect "$domid" --framed --echoed --timeout 60 <frames.bin >out.xe 2>err.xe
    rc=$?
    took=$(since "$start")
    sed 's/^/  | /' err.xe
    judge xe "$rc" Ling "$(domu_result xe 60)" \
        "seed-strawman listens, dom0's pore connects (offers v2, gets LING): $(wc -c <frames.bin) bytes there and back in $took s"
fi

# ---- xf: we listen (offering v2), seed-strawman connects and checks the echo
./pore straw listen --from "$domid" --echo --timeout 240 2>err.xf &
pid=$!
i=0
until grep -q "listening as" err.xf 2>/dev/null; do # its manager is up and watching
    i=$((i + 1))
    [ "$i" -le 600 ] || break
    sleep 0.2
done
if grep -q "listening as" err.xf; then
    xenstore-write "$dom/data/xenlab/go-xf" 1
    note "xf: listening, told the domU"
else
    note "xf: our listener's node never appeared"
fi
wait "$pid"
rc=$?
sed 's/^/  | /' err.xf
judge xf "$rc" Ling "$(domu_result xf 60)" \
    "dom0's pore listens (offers v2) and echoes, seed-strawman connects (LING)"

# ---- the domU's pore xs (it ran while we were busy)
if [ "$xs" != 0 ]; then
    r=$(domu_result xs 300)
    if [ "$r" = ok ]; then pass xs-domU "(/dev/xen/xenbus)"; else fail xs-domU "$r"; fi
fi

# ---- destroy: two straws streaming, then `xl destroy`
feed() { while cat frames.bin; do :; done; }
wait_node "$dom/data/straw-e1" 300 || fail destroy "the domU's listener e1 never came up"
{ feed | ./pore straw connect "$domid" --name e1 --framed --timeout 60 >out.e1; echo "exit $?"; } 2>&1 |
    stamp >err.e1 &
# Both straws carry frames both ways (the domU echoes) before the domain goes.
end=$(($(secs) + 120))
while [ "$(wc -c 2>/dev/null <out.e1 || echo 0)" -lt 3000000 ]; do
    if [ "$(secs)" -ge "$end" ]; then
        fail destroy "the straw did not stream ($(wc -c <out.e1) B back)"
        break
    fi
    sleep 0.2
done
# The first signs of the death dom0 can see, timed: the domU's directory going (libxl removes
# it late in the destroy, before the hypercall) and @releaseDomain (xenstored fires it once the
# domain is dying).
watch_to() { # PATH FILE: every event on PATH, prefixed with dom0's uptime, into FILE
    { sh -c 'echo $$ >"$0.pid"; exec xenstore-watch "$1"' "$2" "$1" | stamp >"$2"; } &
}
watch_to "$dom" watch.dom
watch_to @releaseDomain watch.rel
i=0
while [ ! -s watch.dom ] || [ ! -s watch.rel ]; do # their registration events
    i=$((i + 1))
    [ "$i" -le 100 ] || { note "the xenstore watches did not start"; break; }
    sleep 0.1
done
t_destroy=$(now)
xl destroy straw
t_destroyed=$(now)
note "xl destroy took $(awk -v a="$t_destroy" -v b="$t_destroyed" 'BEGIN { printf "%.2f", b - a }') s"
end=$(($(secs) + 30))
while ! grep -q '^[0-9.]* exit ' err.e1 && [ "$(secs)" -lt "$end" ]; do sleep 0.2; done
for e in e1; do
    sed 's/^/  | /' "err.$e"
    gone=$(grep -m 1 'peer gone' "err.$e" | cut -d' ' -f1)
    if [ -z "$gone" ]; then
        fail "destroy-$e" "no \"peer gone\" (streamed $(wc -c <"out.$e") B back)"
        continue
    fi
    lat=$(awk -v a="$t_destroy" -v b="$gone" 'BEGIN { printf "%.3f", b - a }')
    after=$(awk -v a="$t_destroyed" -v b="$gone" 'BEGIN { printf "%.3f", b - a }')
    # First event after the destroy began: the directory itself (its removal), @releaseDomain.
    t_dir=$(awk -v t="$t_destroy" -v p="$dom" '$1 > t && $2 == p { print $1; exit }' watch.dom)
    t_rel=$(awk -v t="$t_destroy" '$1 > t { print $1; exit }' watch.rel)
    sign=$(printf '%s\n' $t_dir $t_rel | sort -n | head -n 1)
    timeline="xl destroy took $(span "$t_destroy" "$t_destroyed") s; after it began:"
    timeline="$timeline domU directory gone $(span "$t_destroy" "$t_dir") s, @releaseDomain $(span "$t_destroy" "$t_rel") s, peer gone $lat s"
    note "destroy-$e: $timeline (peer gone $(span "$sign" "$gone") s after the first sign in xenstore)"
    # Asserted: pore's part, peer gone within a second of the first sign of the death that
    # dom0 can see (libxl's own work before it varies with the machine's load: 0.4-2.6 s).
    if ! grep -q '^[0-9.]* exit ' "err.$e"; then
        fail "destroy-$e" "pore did not exit within 30 s of the destroy"
    elif grep -q 'still held' "err.$e"; then
        fail "destroy-$e" "pore still held grants, mappings or ports"
    elif [ -z "$sign" ]; then
        fail "destroy-$e" "xenstore showed no sign of the death ($timeline)"
    elif awk -v a="$sign" -v b="$gone" 'BEGIN { exit !(b - a < 1.0) }'; then
        pass "destroy-$e" "peer gone $(span "$sign" "$gone") s after the first sign in xenstore, $lat s after xl destroy began ($after s after it returned), $(wc -c <"out.$e") B streamed back"
    else
        fail "destroy-$e" "peer gone $(span "$sign" "$gone") s after the first sign in xenstore ($timeline)"
    fi
done
for w in watch.dom watch.rel; do kill "$(cat "$w.pid")" 2>/dev/null; done
# Nothing left: no zombie domain (dom0 unmapped the domU's pages), no nodes of ours.
i=0
while [ "$(xl list | tail -n +2 | grep -vc '^Domain-0 ')" != 0 ]; do
    i=$((i + 1))
    [ "$i" -le 50 ] || { fail leaks "a domain is left: $(xl list)"; break; }
    sleep 0.2
done
left=$(xenstore-ls -f /local/domain/0/data 2>/dev/null | grep -E "/(straw|warts)-(x[a-d]|e1)|/(straw|warts)/$domid" || true)
[ -z "$left" ] || fail leaks "dom0 nodes left: $left"
if xenstore-exists "$dom"; then fail leaks "$dom still exists"; fi
case " $failed " in *" leaks "*) ;; *) pass leaks "no domain, no node left in dom0" ;; esac
xenlab-domu wait straw 5 >console.domu 2>&1
grep -v '^domU straw| *$' console.domu

# Processes of dom0 that crashed meanwhile (with XSAVE in QEMU's CPU, unrelated busybox
# programs died of SIGSEGV once a domU shared the CPU: see scripts/xenlab/run.sh).
crashes=$(dmesg | grep -ci 'segfault\|general protection')
dmesg | grep -i 'segfault\|general protection' | sed 's/^/straw-dom0: kernel: /'
grep -ci 'segfault\|general protection\|Segmentation fault' console.domu >domu.crashes
note "crashed processes: $crashes in dom0, $(cat domu.crashes) in the domU"
note "total $(since "$t0") s since xl create"
if [ -n "$failed" ]; then note "FAILED:$failed"; exit 1; fi
note "all passed"
