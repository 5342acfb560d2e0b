#!/usr/bin/env bash
# Boots the lab made by build.sh (Xen 4.17, Debian Linux 6.1 as PV dom0) in QEMU with software
# emulation, runs PAYLOAD as root in dom0 and exits with its exit status.
#
#   bash scripts/xenlab/run.sh LABDIR PAYLOAD [TIMEOUT]
#
# PAYLOAD is a shell script (busybox sh; or any executable) that becomes /xenlab/payload/run, run
# in /xenlab/payload once xenstored, xen-init-dom0 and xenconsoled are up. XENLAB_FILES lists
# files and directories (space separated) copied next to it. ELF files among them are stripped
# of debug info, and the shared libraries they need that dom0 lacks are copied from this host
# into /xenlab/lib (on LD_LIBRARY_PATH there): programs built here with glibc 2.36 run as is.
#
# TIMEOUT (default 300 s) is a hard limit on the whole boot; inside, dom0 stops the payload
# max(20 s, 10%) before it, so that the end is reported. A boot that times out is retried once;
# any other failure is final.
# Exit status: the payload's; 124 timed out twice; 125 the lab did not come up or crashed
# (the tail of the console is printed); 126 bad usage or a missing prerequisite.
#
# XENLAB_DOMU=1 adds what dom0 needs to start domUs with xenlab-domu (see there).
#
# Knobs: XENLAB_LOG (full console log with timestamps, default LABDIR/console.log; a timed-out
# first attempt is kept as LOG.1), XENLAB_VERBOSE=1 (stream the whole console),
# XENLAB_MEM (MiB of the machine, 1024), XENLAB_DOM0_MEM (MiB, 512), XENLAB_SMP (vCPUs, 2),
# XENLAB_XEN_ARGS / XENLAB_DOM0_ARGS (appended to Xen's / dom0's command line), XENLAB_CPU
# (QEMU's -cpu, default max,-xsave).
set -uo pipefail

usage() { echo "usage: run.sh LABDIR PAYLOAD [TIMEOUT]" >&2; exit 126; }
die() { echo "xenlab run: ERROR: $*" >&2; exit 126; }
[ "$#" -ge 2 ] || usage
lab=$(realpath "$1") || die "no lab directory $1 (run scripts/xenlab/build.sh)"
payload=$(realpath "$2") || die "no payload $2"
limit=${3:-300}
[[ "$limit" =~ ^[0-9]+$ ]] && [ "$limit" -ge 30 ] || die "TIMEOUT must be a number of seconds >= 30"
for f in xen dom0-kernel dom0-initrd.img dom0-files.txt; do
  [ -s "$lab/$f" ] || die "$lab/$f is missing (run scripts/xenlab/build.sh $lab)"
done
for tool in qemu-system-x86_64 cpio perl readelf timeout; do
  command -v "$tool" >/dev/null || die "$tool is missing (scripts/install-deps.sh installs it)"
done
log=${XENLAB_LOG:-$lab/console.log}
mkdir -p "$(dirname "$log")"

tmp=$(mktemp -d /tmp/pore-xenlab-run.XXXXXX)
trap 'rm -rf "$tmp"' EXIT

# ---- the payload archive, appended to dom0's initramfs (the kernel unpacks both)
tree=$tmp/tree
mkdir -p "$tree/xenlab/payload" "$tree/xenlab/lib"
cp "$payload" "$tree/xenlab/payload/run"
chmod 755 "$tree/xenlab/payload/run"
for f in ${XENLAB_FILES:-}; do
  [ -e "$f" ] || die "XENLAB_FILES: $f does not exist"
  cp -a "$f" "$tree/xenlab/payload/"
done
is_elf() { [ "$(head -c 4 "$1" 2>/dev/null | od -An -c | tr -d ' ')" = '177ELF' ]; }
host_lib() { # SONAME -> its path on this host
  local dir
  for dir in /lib/x86_64-linux-gnu /usr/lib/x86_64-linux-gnu /lib64 /usr/lib; do
    [ -e "$dir/$1" ] && { echo "$dir/$1"; return 0; }
  done
  return 1
}
queue=()
while IFS= read -r -d '' f; do
  is_elf "$f" || continue
  objcopy --strip-debug "$f" 2>/dev/null || true
  queue+=("$f")
done < <(find "$tree/xenlab/payload" -type f -print0)
# Libraries dom0 lacks (glibc and libgcc_s are there, from the same Debian release).
while [ "${#queue[@]}" -gt 0 ]; do
  f=${queue[0]}
  queue=("${queue[@]:1}")
  for so in $(readelf -d "$f" 2>/dev/null | sed -n 's/.*(NEEDED).*\[\(.*\)\]$/\1/p'); do
    grep -q "/$so\$" "$lab/dom0-files.txt" && continue
    [ -e "$tree/xenlab/lib/$so" ] && continue
    src=$(host_lib "$so") || die "$(basename "$f") needs $so, found neither in dom0 nor on this host"
    cp -L "$src" "$tree/xenlab/lib/$so"
    queue+=("$tree/xenlab/lib/$so")
  done
done
(cd "$tree" && find . | LC_ALL=C sort | cpio -o -H newc --quiet -R 0:0) >"$tmp/payload.cpio" ||
  die "cpio failed"
guest=()
if [ "${XENLAB_DOMU:-0}" = 1 ]; then
  [ -s "$lab/domu.cpio" ] || die "$lab/domu.cpio is missing (run scripts/xenlab/build.sh $lab)"
  guest=("$lab/domu.cpio")
fi
cat "$lab/dom0-initrd.img" "${guest[@]}" "$tmp/payload.cpio" >"$tmp/initrd.img"
echo "xenlab run: payload $(basename "$payload")${XENLAB_FILES:+ + ${XENLAB_FILES}}" \
  "($(du -h "$tmp/payload.cpio" | cut -f1) unpacked), hard timeout ${limit} s"

# ---- the machine
smp=${XENLAB_SMP:-2}
dom0_mem=${XENLAB_DOM0_MEM:-512}
# smap=0: with SMAP, QEMU's emulated CPU makes the PV dom0 fault at its first exception.
# bootscrub=0: do not zero all free memory at boot (slow under emulation, and it makes QEMU
# touch every page of the machine).
xen_args="console=com1 com1=115200,8n1 dom0_mem=${dom0_mem}M,max:${dom0_mem}M"
xen_args+=" dom0_max_vcpus=$smp smap=0 bootscrub=0 spec-ctrl=no loglvl=all guest_loglvl=all"
xen_args+=" ${XENLAB_XEN_ARGS:-}"
# mitigations=off, cryptomgr.notests: less work for the emulated CPU; nothing here is secret.
dom0_args="console=hvc0 earlyprintk=xen loglevel=5 mitigations=off cryptomgr.notests"
# The payload must end this many seconds after dom0's clock started (Xen boots before it, and
# reporting and powering off take a while on a busy machine).
margin=$((limit / 10 > 20 ? limit / 10 : 20))
dom0_args+=" xenlab.deadline=$((limit - margin))"
dom0_args+=" ${XENLAB_DOM0_ARGS:-}"
# -cpu max without XSAVE: with XSAVE, programs of dom0 and of the domUs crash at random (SIGSEGV
# in malloc and on TLS reads: register state corrupted) as soon as two domains share the CPU
# (after `xl create`), 3 and 10 crashes in two runs of about 2400 short busybox programs; without it, none (Xen and the
# guests fall back to FXSAVE and SSE).
qemu=(qemu-system-x86_64 -accel tcg -cpu "${XENLAB_CPU:-max,-xsave}" -m "${XENLAB_MEM:-1024}" -smp "$smp"
  -nographic -no-reboot -net none
  -kernel "$lab/xen" -append "$xen_args"
  # multiboot modules, comma separated: the dom0 kernel with its command line, its initramfs
  -initrd "$lab/dom0-kernel $dom0_args,$tmp/initrd.img")

# Every console line goes to the log with the seconds since QEMU started; the payload's lines
# (or all, with XENLAB_VERBOSE=1) are shown as they come.
filter='BEGIN { $| = 1; $t0 = time; open(LOG, ">", $ENV{XENLAB_THIS_LOG}) or die; LOG->autoflush(1) }
  s/\r//g; printf LOG "%7.2f %s", time - $t0, $_;
  $show = 1 if /xenlab-dom0: .* payload start/;
  print "  | $_" if $show || $ENV{XENLAB_VERBOSE};
  $show = 0 if /^PORE-XENLAB-/;'

when() { # PATTERN: seconds at which the log first shows it
  grep -a -m 1 -e "$1" "$log" | awk '{ print $1 }'
}
boot() { # ATTEMPT -> sets status, kind (ok|timeout|crash)
  local started=$SECONDS qrc
  timeout --kill-after=10 "$limit" "${qemu[@]}" </dev/null 2>&1 |
    XENLAB_THIS_LOG=$log XENLAB_VERBOSE=${XENLAB_VERBOSE:-} \
      perl -MTime::HiRes=time -MIO::Handle -ne "$filter"
  qrc=${PIPESTATUS[0]}
  local line
  line=$(tr -d '\r' <"$log" | grep -a -o 'PORE-XENLAB-[A-Z-]*=.*' | tail -n 1)
  echo "xenlab run: attempt $1: $((SECONDS - started)) s wall; since QEMU start: Xen $(when '(XEN) Xen version')," \
    "dom0 kernel $(when 'Linux version'), dom0 ready $(when 'xenlab-dom0: .*xen user space up')," \
    "payload end $(when 'xenlab-dom0: .*payload end'), QEMU exit $(tail -n 1 "$log" | awk '{ print $1 }') s"
  case "$line" in
    PORE-XENLAB-STATUS=124) kind=timeout status=124 ;;
    PORE-XENLAB-STATUS=*) kind=ok status=${line#*=} ;;
    PORE-XENLAB-SETUP-FAILED=*) kind=crash status=125
      echo "xenlab run: dom0 could not bring Xen's user space up: ${line#*=}" ;;
    *)
      if [ "$qrc" = 124 ] || [ "$qrc" = 137 ]; then
        kind=timeout status=124
        echo "xenlab run: QEMU killed after the hard timeout of $limit s"
      else
        kind=crash status=125
        echo "xenlab run: QEMU exited (status $qrc) without a status line: Xen or dom0 crashed?"
        grep -a -m 3 -e 'Panic on CPU' -e 'Dom0 crashed' -e 'Kernel panic' -e 'Initramfs unpacking failed' \
          "$log" | sed 's/^/xenlab run:   /'
      fi ;;
  esac
}

boot 1
if [ "$kind" = timeout ]; then
  mv "$log" "$log.1"
  echo "xenlab run: RETRY: attempt 1 timed out (its console: $log.1)"
  boot 2
fi
if [ "$kind" != ok ] || [ "$status" != 0 ]; then
  echo "xenlab run: FAILED (status $status); last 60 console lines of $log:"
  tail -n 60 "$log" | sed 's/^/  > /'
fi
echo "xenlab run: full console log: $log"
exit "$status"
