#!/usr/bin/env bash
# Builds the Xen lab: a real Xen 4.17 hypervisor with a Debian Linux 6.1 PV dom0 that boots
# under QEMU (software emulation), made only from Debian bookworm packages fetched by name.
# Nothing is installed on the host: the packages are downloaded with `apt-get download` into a
# cache outside the clone and unpacked with dpkg-deb.
#
#   bash scripts/xenlab/build.sh [LABDIR]
#
# LABDIR (default $XENLAB_CACHE/lab) receives:
#   xen              the hypervisor, uncompressed (QEMU's multiboot loader wants the ELF)
#   dom0-kernel      dom0's (and the domUs') kernel: the Debian kernel as a plain ELF (vmlinux)
#   vmlinuz          the Debian kernel as packaged
#   dom0-initrd.img  dom0's initramfs: busybox, the Xen modules, C xenstored, xenconsoled,
#                    xl, xen-init-dom0, xenstore-* with their shared libraries, /init
#                    (dom0-init), xenlab-domu
#   domu.cpio        what dom0 needs to start domUs (/xenlab/domu-kernel, /xenlab/domu-initrd.img),
#                    appended to dom0's initramfs by run.sh when XENLAB_DOMU=1
#   domu-initrd.img  a small domU initramfs: busybox, the Xen modules, xenstore-*, glibc and
#                    libgcc_s (so dynamically linked Rust binaries run there too), /init (domu-init)
#   dom0-files.txt   every path in dom0's initramfs (run.sh uses it to add only missing libs)
#
# Knobs: XENLAB_CACHE (default /var/cache/pore-xenlab; the .debs go to its debs/),
#        XENLAB_KVER (kernel ABI, default: what linux-image-amd64 depends on).
# A second run with the same packages and scripts reuses LABDIR (about a second).
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
cache=${XENLAB_CACHE:-/var/cache/pore-xenlab}
lab=$(realpath -m "${1:-$cache/lab}")
debs=$cache/debs
xenver=4.17
t0=$(date +%s.%N)
say() { echo "xenlab build: $*"; }
die() { echo "xenlab build: ERROR: $*" >&2; exit 1; }

for tool in apt-get apt-cache dpkg-deb cpio gzip xz readelf objcopy sha256sum; do
  command -v "$tool" >/dev/null || die "$tool is missing (scripts/install-deps.sh installs it)"
done
mkdir -p "$debs" "$lab"

# A fresh machine may have no package lists yet.
if ! apt-cache show busybox-static >/dev/null 2>&1; then
  say "no package lists; apt-get update"
  timeout 600 apt-get update -qq || die "apt-get update failed"
fi
kver=${XENLAB_KVER:-$(apt-cache depends linux-image-amd64 2>/dev/null |
  sed -n 's/^ *Depends: linux-image-\([0-9].*-amd64\)$/\1/p' | head -n 1)}
[ -n "$kver" ] || die "cannot tell the kernel version (apt-cache depends linux-image-amd64)"

packages=(
  "xen-hypervisor-$xenver-amd64" "linux-image-$kver" busybox-static
  "xen-utils-$xenver" xenstore-utils
  # the shared libraries of the tools; the DT_NEEDED walk below fails loudly if one is missing
  "libxenmisc$xenver" libxenstore4 libxencall1 libxendevicemodel1 libxenevtchn1
  libxenforeignmemory1 libxengnttab1 libxenhypfs1 libxentoolcore1 libxentoollog1
  libc6 libgcc-s1 libyajl2 libuuid1 zlib1g liblzma5 libzstd1
)

# ---- 1. the .deb files (the exact versions apt would fetch now; download only what is missing)
uris=$(apt-get download --print-uris "${packages[@]}" 2>&1) || die "apt-get download --print-uris: $uris"
wanted=()
missing=()
while read -r _ file _; do
  [ -n "$file" ] || continue
  wanted+=("$file")
  [ -s "$debs/$file" ] || missing+=("${file%%_*}")
done < <(printf '%s\n' "$uris" | grep "^'")
[ "${#wanted[@]}" = "${#packages[@]}" ] || die "apt knows ${#wanted[@]} of ${#packages[@]} packages: $uris"
if [ "${#missing[@]}" -gt 0 ]; then
  say "downloading ${#missing[@]} packages into $debs"
  (cd "$debs" && timeout 900 apt-get download -q -o APT::Sandbox::User=root "${missing[@]}") || die "apt-get download failed"
fi
for file in "${wanted[@]}"; do [ -s "$debs/$file" ] || die "$debs/$file was not downloaded"; done
# Older versions of the same packages only take space.
for old in "$debs"/*.deb; do
  case " ${wanted[*]} " in *" $(basename "$old") "*) ;; *) rm -f "$old" ;; esac
done

# ---- 2. nothing changed since the last build: done
key=$( (printf '%s\n' "$kver" "${wanted[@]}"; cat "$here"/build.sh "$here"/dom0-init \
  "$here"/domu-init "$here"/xenlab-domu) | sha256sum | cut -d' ' -f1)
if [ -f "$lab/stamp" ] && [ "$(cat "$lab/stamp")" = "$key" ]; then
  say "up to date in $lab (Xen $xenver, kernel $kver)"
  exit 0
fi
rm -f "$lab/stamp"
say "Xen $xenver, kernel $kver -> $lab"

# ---- 3. unpack (only the parts we use from the kernel package: it is 400 MB unpacked)
work=$(mktemp -d /tmp/pore-xenlab-build.XXXXXX)
trap 'rm -rf "$work"' EXIT
pkgroot=$work/pkg
mkdir -p "$pkgroot"
for file in "${wanted[@]}"; do
  case "$file" in
    linux-image-*)
      dpkg-deb --fsys-tarfile "$debs/$file" |
        tar -x -C "$pkgroot" --wildcards './boot/vmlinuz-*' './boot/config-*' \
          "./lib/modules/$kver/kernel/drivers/xen/*" ;;
    *) dpkg-deb -x "$debs/$file" "$pkgroot" ;;
  esac
done
gzip -dc "$pkgroot/boot/xen-$xenver-amd64.gz" >"$work/xen"
cp "$pkgroot/boot/vmlinuz-$kver" "$work/vmlinuz"
# dom0's kernel as a plain ELF: Xen then need not xz-decompress the bzImage under emulation
# (about 7 s at boot on a busy 2-CPU machine). The payload is the xz stream after the setup code.
# Falls back to the bzImage (slower, same result) if that cannot be done.
offset=$(LC_ALL=C grep -obUaP '\xfd7zXZ\x00' "$work/vmlinuz" | head -n 1 | cut -d: -f1 || true)
if [ -n "$offset" ] &&
  { tail -c +$((offset + 1)) "$work/vmlinuz" | xz -dc >"$work/vmlinux" 2>/dev/null || true; } &&
  [ "$(head -c 4 "$work/vmlinux" | od -An -c | tr -d ' ')" = '177ELF' ] &&
  objcopy --strip-all "$work/vmlinux" "$work/dom0-kernel"; then
  rm -f "$work/vmlinux"
else
  say "warning: cannot extract vmlinux from the bzImage; dom0 boots from the bzImage"
  cp "$work/vmlinuz" "$work/dom0-kernel"
fi

# ---- 4. helpers to fill an initramfs tree from the unpacked packages
libdirs=(/lib/x86_64-linux-gnu /usr/lib/x86_64-linux-gnu /lib64 /usr/lib)
lib_path() { # SONAME -> path inside the packages
  local dir
  for dir in "${libdirs[@]}"; do
    if [ -e "$pkgroot$dir/$1" ]; then echo "$dir/$1"; return 0; fi
  done
  die "no package provides $1 (add its package to the list in build.sh)"
}
install_file() { # TREE PATH [DEST]: copy a file out of the packages, following symlinks
  mkdir -p "$1$(dirname "${3:-$2}")"
  cp -L "$pkgroot$2" "$1${3:-$2}"
}
install_elf() { # TREE PATH...: ELF files with every library they need (DT_NEEDED, recursively)
  local tree=$1 path so
  shift
  local queue=("$@")
  while [ "${#queue[@]}" -gt 0 ]; do
    path=${queue[0]}
    queue=("${queue[@]:1}")
    [ -e "$tree$path" ] && continue
    install_file "$tree" "$path"
    for so in $(readelf -d "$pkgroot$path" | sed -n 's/.*(NEEDED).*\[\(.*\)\]$/\1/p'); do
      queue+=("$(lib_path "$so")")
    done
  done
  # The program interpreter is /lib64/ld-linux-x86-64.so.2; Debian keeps the file in multiarch.
  if [ ! -e "$tree/lib64/ld-linux-x86-64.so.2" ]; then
    install_file "$tree" /lib/x86_64-linux-gnu/ld-linux-x86-64.so.2
    mkdir -p "$tree/lib64"
    ln -s /lib/x86_64-linux-gnu/ld-linux-x86-64.so.2 "$tree/lib64/ld-linux-x86-64.so.2"
  fi
}
install_base() { # TREE: busybox with one link per applet, the Xen modules, empty mount points
  local tree=$1 applet mod
  install_file "$tree" /bin/busybox
  for applet in $("$pkgroot/bin/busybox" --list); do
    [ -e "$tree/bin/$applet" ] || ln -s busybox "$tree/bin/$applet"
  done
  mkdir -p "$tree/lib/modules"
  # Debian builds these as modules; xenbus, the console and the grant table are built in.
  for mod in xen-evtchn xen-gntalloc xen-gntdev xen-privcmd xenfs/xenfs; do
    local src=/lib/modules/$kver/kernel/drivers/xen/$mod.ko
    if [ -e "$pkgroot$src" ]; then
      install_file "$tree" "$src" "/lib/modules/${mod#*/}.ko"
    elif [ -e "$pkgroot$src.xz" ]; then
      xz -dc "$pkgroot$src.xz" >"$tree/lib/modules/${mod#*/}.ko"
    else
      die "module $mod is not in linux-image-$kver"
    fi
  done
  mkdir -p "$tree"/{dev,proc,sys,run,tmp,root,etc,var/log,var/lib}
}
pack() { # TREE OUT: a gzip'ed newc archive, zero-padded to a multiple of 512 bytes
  (cd "$1" && find . | LC_ALL=C sort | cpio -o -H newc --quiet -R 0:0) | gzip -6 >"$2"
  # The kernel accepts concatenated archives, but an uncompressed one only at an offset that is
  # a multiple of 4; zeros between archives are skipped.
  truncate -s $((($(stat -c %s "$2") + 511) / 512 * 512)) "$2"
}

# ---- 5. domU initramfs
domu=$work/domu
install_base "$domu"
# What a dynamically linked Rust binary needs (glibc, libm, libgcc_s for unwinding); xenlab-domu
# adds the rest of a payload's libraries from dom0.
install_elf "$domu" "$(lib_path libc.so.6)" "$(lib_path libm.so.6)" "$(lib_path libgcc_s.so.1)" \
  /usr/bin/xenstore
for cmd in read write ls list rm exists chmod watch; do
  ln -s xenstore "$domu/usr/bin/xenstore-$cmd"
done
cp "$here/domu-init" "$domu/init"
chmod 755 "$domu/init"
pack "$domu" "$work/domu-initrd.img"

# ---- 6. dom0 initramfs
dom0=$work/dom0
install_base "$dom0"
tools=/usr/lib/xen-$xenver/bin # /usr/sbin/xl etc. are wrappers that need /sys/hypervisor
install_elf "$dom0" $tools/xenstored $tools/xenconsoled $tools/xl $tools/xen-init-dom0 \
  /usr/bin/xenstore
# glibc loads libgcc_s with dlopen (pthread_cancel, unwinding): no DT_NEEDED names it, but xl
# aborts without it, and so do Rust binaries that unwind.
install_elf "$dom0" "$(lib_path libgcc_s.so.1)" "$(lib_path libm.so.6)"
for cmd in read write ls list rm exists chmod watch; do # one binary, dispatching on argv[0]
  ln -s xenstore "$dom0/usr/bin/xenstore-$cmd"
done
mkdir -p "$dom0/etc/xen" "$dom0/var/lib/xen" "$dom0/var/lib/xenstored" "$dom0/var/log/xen/console"
# dom0's memory is fixed on Xen's command line: xl must not try to balloon it.
echo 'autoballoon="off"' >"$dom0/etc/xen/xl.conf"
cp "$here/dom0-init" "$dom0/init"
cp "$here/xenlab-domu" "$dom0/usr/bin/xenlab-domu"
chmod 755 "$dom0/init" "$dom0/usr/bin/xenlab-domu"
(cd "$dom0" && find . -mindepth 1 | sed 's/^\.//' | LC_ALL=C sort) >"$work/dom0-files.txt"
pack "$dom0" "$work/dom0-base.img"
# The domU's kernel (the plain ELF: xl then copies it instead of xz-decompressing the bzImage,
# 8 s instead of 45 s on a busy machine) and its initramfs go into a second, uncompressed
# archive that run.sh appends only when asked (XENLAB_DOMU=1): unpacking 65 MB costs dom0 time.
mkdir -p "$work/guest/xenlab"
cp "$work/dom0-kernel" "$work/guest/xenlab/domu-kernel"
cp "$work/domu-initrd.img" "$work/guest/xenlab/"
(cd "$work/guest" && find . | LC_ALL=C sort | cpio -o -H newc --quiet -R 0:0) >"$work/domu.cpio"
mv "$work/dom0-base.img" "$work/dom0-initrd.img"

for f in xen dom0-kernel vmlinuz dom0-initrd.img domu.cpio domu-initrd.img dom0-files.txt; do
  mv "$work/$f" "$lab/$f"
done
echo "$key" >"$lab/stamp"
say "done in $(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }') s:" \
  "dom0 initrd $(du -h "$lab/dom0-initrd.img" | cut -f1), domU initrd $(du -h "$lab/domu-initrd.img" | cut -f1)"
