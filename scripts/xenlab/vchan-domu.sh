#!/bin/sh
# The domU's half of scripts/xenlab/vchan-bench.sh: runs each receiver command dom0 writes to
# data/vb/cmd-N (relative to our domain) and writes its report to data/vb/res-N.
xenstore-write data/vb/ready 1
n=1
while :; do
    i=0
    until cmd=$(xenstore-read "data/vb/cmd-$n" 2>/dev/null); do
        xenstore-exists data/vb/cmd-done 2>/dev/null && exit 0
        i=$((i + 1))
        [ "$i" -le 3000 ] || { echo "vchan-domu: no command $n"; exit 1; }
        sleep 0.1
    done
    out=$($cmd 2>&1 </dev/null >/dev/null)
    rc=$?
    line=$(echo "$out" | grep -E "received|FAIL|fail|error" | tail -n 1)
    [ "$rc" = 0 ] || line="fail ($rc): $out"
    xenstore-write "data/vb/res-$n" "$line"
    n=$((n + 1))
done
