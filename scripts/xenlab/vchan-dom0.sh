#!/bin/sh
# dom0's half of scripts/xenlab/vchan-bench.sh (busybox sh, as root, in /xenlab/payload): starts
# the domU (scripts/xenlab/vchan-domu.sh), then for each cell writes the receiver's command to
# the domU's data/vb/cmd-N, waits for its endpoint in xenstore, sends, and collects the
# receiver's report from data/vb/res-N. Prints a table of the medians and ratios at the end.
PATH=/xenlab/payload:$PATH
. ./vchan-bench.conf
note() { echo "vchan-dom0: $*"; }
secs() { read -r up _ </proc/uptime; echo "${up%.*}"; }
wait_node() { # PATH SECONDS
    end=$(($(secs) + $2))
    until xenstore-exists "$1" 2>/dev/null; do
        [ "$(secs)" -lt "$end" ] || return 1
        sleep 0.1
    done
}
mkdir -p domu.d
cp vchan-domu.sh domu.d/run
cp pore vchan-bench domu.d/
chmod 755 domu.d/run
XENLAB_DOMU_MEMORY=256 xenlab-domu start vb ./domu.d 800 >domid || { note "xl create failed"; exit 1; }
domid=$(cat domid)
dom=/local/domain/$domid
note "domU is domain $domid"
wait_node "$dom/data/vb/ready" 120 || { note "the domU did not come up"; exit 1; }
bytes=$((MIB * 1048576))
n=0
: >results
run_cell() { # KIND SIZE ROUND
    kind=$1 size=$2
    count=$((bytes / size))
    n=$((n + 1))
    case $kind in
    v2) recv="./pore straw listen --from 0 --name vb$n --sink --timeout 120"; node=$dom/data/straw-vb$n ;;
    ling) recv="./pore straw listen --from 0 --name vb$n --layout ling --sink --timeout 120"; node=$dom/data/straw-vb$n ;;
    vchan | proxy) recv="./vchan-bench recv 0 data/vc$n 65536 $bytes $size"; node=$dom/data/vc$n/event-channel ;;
    esac
    note "round $3: $kind $size B x $count"
    xenstore-write "$dom/data/vb/cmd-$n" "$recv"
    wait_node "$node" 60 || { note "cell $n ($kind $size): the receiver did not come up"; echo "$kind $size fail" >>results; return; }
    case $kind in
    v2) ./pore straw connect "$domid" --name "vb$n" --generate "$count" --frame-size "$size" --timeout 120 </dev/null 2>err || cat err ;;
    ling) ./pore straw connect "$domid" --name "vb$n" --layout ling --generate "$count" --frame-size "$size" --timeout 120 </dev/null 2>err || cat err ;;
    vchan) ./vchan-bench send "$domid" "$dom/data/vc$n" "$size" "$count" 2>err || cat err ;;
    proxy) dd if=/dev/zero bs="$size" count="$count" 2>/dev/null | ./vchan-socket-proxy "$domid" "$dom/data/vc$n" - >/dev/null 2>err || cat err ;;
    esac
    wait_node "$dom/data/vb/res-$n" 120 || { note "cell $n: no result"; echo "$kind $size fail" >>results; return; }
    r=$(xenstore-read "$dom/data/vb/res-$n")
    mbs=$(echo "$r" | sed -n 's/.*: \([0-9.]*\) MB\/s.*/\1/p')
    note "round $3: $kind $size B: $r"
    echo "$kind $size ${mbs:-fail}" >>results
}
round=1
while [ "$round" -le "$ROUNDS" ]; do
    for size in 64 65536; do
        for kind in v2 ling vchan proxy; do run_cell "$kind" "$size" "$round"; done
    done
    round=$((round + 1))
done
xenstore-write "$dom/data/vb/cmd-done" done
note "medians over $ROUNDS rounds, $MIB MiB per cell, dom0 -> domU (MB/s; ratio to vchan at equal 64 KiB rings):"
for size in 64 65536; do
    med() { grep "^$1 $size " results | cut -d' ' -f3 | sort -n | awk '{ v[NR] = $1 } END { print (NR ? v[int((NR + 1) / 2)] : "fail") }'; }
    vc=$(med vchan)
    for kind in v2 ling vchan proxy; do
        m=$(med "$kind")
        ratio=$(awk -v a="$m" -v b="$vc" 'BEGIN { if (b + 0 > 0 && a + 0 > 0) printf "%.2f", a / b; else print "-" }')
        note "  $size B  $kind  $m MB/s  ${ratio}x vchan  (all: $(grep "^$kind $size " results | cut -d' ' -f3 | tr '\n' ' '))"
    done
done
xenlab-domu wait vb 60 >/dev/null 2>&1
