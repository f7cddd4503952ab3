#!/usr/bin/env bash
# The service as the robot runs it: a VM with systemd as PID 1, the Debian package installed with dpkg, the
# unit enabled against vivid, and checks of what systemd does with it (watchdog, restarts, stop, a bad config,
# a camera disconnect, the journal). See docs/hil.md, "systemd as PID 1".
#
#   tests/hil/systemd.sh amd64|arm64 DEB     the test
#   tests/hil/systemd.sh amd64|arm64         only steps 1 and 2 (fills the cache; no package needed)
#
# Steps (cached under $CACHE/hil/systemd-<arch>, so a second run downloads and bootstraps nothing):
#   1. the pinned Debian kernel image (amd64 through the host's apt; arm64 through a private apt state in the
#      cache, so the host's dpkg architectures are left alone), unpacked;
#   2. a Debian 12 root (debootstrap minbase + systemd, udev, kmod, procps, v4l-utils, busybox-static) as a
#      tarball: amd64 on the host; arm64 with debootstrap --foreign and its second stage run in the VM;
#   3. every run: the root unpacked, the vivid modules, the .deb, the C reader (tests/c/shm_follow.c, built
#      here), the test driver and its configs added, an ext4 image made with mkfs.ext4 -d, and an initramfs
#      (the root's busybox, virtio and ext4 modules) that mounts it and switch_roots into systemd;
#   4. qemu boots it (TCG); hil-driver.service runs tests/hil/systemd/driver.sh, which installs the package and
#      runs the checks; the verdict leaves through isa-debug-exit (amd64) and a "HIL-VERDICT rc=N" console
#      line (both arches; the only one on arm64, whose virt machine has no isa-debug-exit).
# Exit status: 0 when every check passed; 1 on a failed check, a crash or the watchdog (HIL_TIMEOUT s).
#
# Environment: CACHE (~/.cache/ocellus), HIL_KERNEL_ABI (6.1.0-56-<arch>), HIL_TIMEOUT (amd64 900, arm64 1800),
# HIL_MEM (2G), HIL_CPU (amd64 qemu64, arm64 cortex-a57), HIL_QEMU_ARGS, HIL_CHECKS (the driver's check
# names, default all), HIL_DROPIN (a file installed as a drop-in of ocellus.service, to show a check fail),
# HIL_READER_ARGS (options of the C reader in the VM: --no-follow shows the follow checks fail),
# DEBIAN_MIRROR.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
[ $# -eq 1 ] || [ $# -eq 2 ] || { echo "usage: tests/hil/systemd.sh amd64|arm64 [DEB]" >&2; exit 2; }
ARCH=$1
DEB=${2:+$(realpath "$2")}
CACHE=${CACHE:-$HOME/.cache/ocellus}
HIL=$CACHE/hil
SD=$HIL/systemd-$ARCH
MEM=${HIL_MEM:-2G}
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
SECURITY_MIRROR=${DEBIAN_SECURITY_MIRROR:-http://deb.debian.org/debian-security}
SRC=$HERE/systemd

log() { printf 'hil-systemd: %s\n' "$*" >&2; }
die() { printf 'hil-systemd: error: %s\n' "$*" >&2; exit 2; }

case "$ARCH" in
    amd64)
        ABI=${HIL_KERNEL_ABI:-6.1.0-56-amd64}
        QEMU=qemu-system-x86_64 CPU=${HIL_CPU:-qemu64} CC=gcc CONSOLE=ttyS0 TIMEOUT=${HIL_TIMEOUT:-900}
        ;;
    arm64)
        ABI=${HIL_KERNEL_ABI:-6.1.0-56-arm64}
        QEMU=qemu-system-aarch64 CPU=${HIL_CPU:-cortex-a57} CC=aarch64-linux-gnu-gcc CONSOLE=ttyAMA0
        TIMEOUT=${HIL_TIMEOUT:-1800}
        ;;
    *) die "unknown architecture '$ARCH' (amd64 or arm64)" ;;
esac
[ "$(id -u)" -eq 0 ] || die "needs root (debootstrap, dpkg-deb ownership, mkfs.ext4 -d keeps owners)"
if [ -n "$DEB" ]; then
    [ -s "$DEB" ] || die "$DEB missing: make package"
    [ "$(dpkg-deb -f "$DEB" Architecture)" = "$ARCH" ] || die "$DEB is not an $ARCH package"
fi
for tool in "$QEMU" debootstrap mkfs.ext4 cpio depmod modprobe dpkg-deb apt-get "$CC" gzip tar; do
    command -v "$tool" >/dev/null 2>&1 ||
        die "'$tool' not found: run 'make setup' (APT_PACKAGES: qemu-system-x86 qemu-system-arm debootstrap e2fsprogs cpio kmod gcc-aarch64-linux-gnu ...)"
done

t_start=$(date +%s)
mkdir -p "$SD"

# 1. The kernel image package. amd64: the host's apt (run.sh's download is reused when it is there). arm64: a
#    private apt state (lists, cache, dpkg status) under $SD/apt that knows only arm64.
KDIR=$SD/kernel-$ABI
KROOT=$KDIR/root
if [ ! -e "$KDIR/.unpacked" ]; then
    debs=$SD/debs
    mkdir -p "$debs"
    pkg=linux-image-$ABI
    if [ "$ARCH" = amd64 ] && ls "$HIL/debs/$ABI/$pkg"_*.deb >/dev/null 2>&1; then
        cp "$HIL/debs/$ABI/$pkg"_*.deb "$debs/"
    elif [ "$ARCH" = amd64 ]; then
        log "downloading $pkg"
        (cd "$debs" && apt-get download "$pkg" 2>&1 | { grep -v '^W: Download is performed unsandboxed' || true; }) ||
            die "apt-get download $pkg failed (apt-get update; or set HIL_KERNEL_ABI)"
    else
        apt=$SD/apt
        mkdir -p "$apt/lists/partial" "$apt/cache/archives/partial" "$apt/sources.list.d"
        : >"$apt/status"
        keyring=/usr/share/keyrings/debian-archive-keyring.gpg
        cat >"$apt/sources.list" <<EOF
deb [arch=arm64 signed-by=$keyring] $MIRROR bookworm main
deb [arch=arm64 signed-by=$keyring] $SECURITY_MIRROR bookworm-security main
EOF
        apt_arm64() {
            apt-get -q -o APT::Architecture=arm64 -o APT::Architectures::=arm64 \
                -o Dir::State::Lists="$apt/lists" -o Dir::State::status="$apt/status" \
                -o Dir::Cache="$apt/cache" -o Dir::Etc::SourceList="$apt/sources.list" \
                -o Dir::Etc::SourceParts="$apt/sources.list.d" "$@"
        }
        log "apt-get update (arm64 only, private state in $apt)"
        apt_arm64 update >"$apt/update.log" 2>&1 || { cat "$apt/update.log" >&2; die "apt-get update (arm64) failed"; }
        log "downloading $pkg"
        (cd "$debs" && apt_arm64 download "$pkg" 2>&1 | { grep -v '^W: Download is performed unsandboxed' || true; }) ||
            die "apt-get download $pkg failed (or set HIL_KERNEL_ABI)"
    fi
    rm -rf "$KDIR"
    mkdir -p "$KROOT"
    dpkg-deb -x "$debs/$pkg"_*.deb "$KROOT"
    if [ "$ARCH" = amd64 ]; then
        # As run.sh: the uncompressed vmlinux boots directly (PVH), without the in-VM decompression.
        vmlinuz=$KROOT/boot/vmlinuz-$ABI
        off=$({ LC_ALL=C grep -aobUP -m1 '\xfd7zXZ\x00' "$vmlinuz" || true; } | head -1 | cut -d: -f1)
        [ -n "$off" ] || die "no xz stream in $vmlinuz"
        { tail -c +"$((off + 1))" "$vmlinuz" || true; } | xz -dc --single-stream >"$KDIR/kernel"
    else
        # qemu's arm64 loader takes the gzip-compressed Image as it is.
        cp "$KROOT/boot/vmlinuz-$ABI" "$KDIR/kernel"
    fi
    touch "$KDIR/.unpacked"
fi
MODDIR=$KROOT/lib/modules/$ABI
# The package ships no modules.dep (its postinst runs depmod); the subsets below are resolved against it.
[ -s "$MODDIR/modules.dep" ] || depmod -b "$KROOT" "$ABI"

# Copies module NAME and what it depends on from the kernel package into DIR's /lib/modules/$ABI.
copy_modules() {
    local dir=$1 module ko rel
    shift
    for module in "$@"; do
        modprobe -d "$KROOT" -S "$ABI" --show-depends "$module" | awk '$1 == "insmod" {print $2}'
    done | sort -u | while read -r ko; do
        rel=${ko#"$KROOT/"}
        mkdir -p "$dir/$(dirname "$rel")"
        cp "$ko" "$dir/$rel"
    done
    mkdir -p "$dir/lib/modules/$ABI"
    cp "$MODDIR"/modules.order "$MODDIR"/modules.builtin "$MODDIR"/modules.builtin.modinfo "$dir/lib/modules/$ABI/"
    depmod -b "$dir" "$ABI"
}

# The initramfs: the root's own busybox (so it has the VM's architecture), the modules that reach the disk.
# crc32c_generic by name: ext4 asks the crypto API for crc32c through /sbin/modprobe, which the initramfs lacks.
BOOT_MODULES="virtio_pci virtio_blk crc32c_generic ext4"
make_initrd() {
    local busybox=$1 out=$2 stage=$SD/work/initrd module
    rm -rf "$stage"
    mkdir -p "$stage"/{bin,dev,proc,sys}
    cp "$busybox" "$stage/bin/busybox"
    install -m 0755 "$SRC/initrd-init" "$stage/init"
    # shellcheck disable=SC2086
    copy_modules "$stage" $BOOT_MODULES
    for module in $BOOT_MODULES; do
        modprobe -d "$KROOT" -S "$ABI" --show-depends "$module" | grep -q '^insmod' && echo "$module"
    done >"$stage/modules"
    (cd "$stage" && find . -print0 | cpio --null -o -H newc --quiet | gzip -1) >"$out"
}

# Boots KERNEL INITRD with the disks and command line given; tees the console to LOG; sets qemu_rc.
boot() {
    local log_file=$1 append=$2
    shift 2
    local machine=() accel="tcg,thread=multi"
    if [ "$ARCH" = amd64 ]; then
        # shellcheck disable=SC2054 # the commas belong to qemu's -device argument
        machine=(-cpu "$CPU" -device isa-debug-exit,iobase=0xf4,iosize=0x04)
        if grep -qwE 'vmx|svm' /proc/cpuinfo && [ -w /dev/kvm ]; then accel=kvm machine[1]=${HIL_CPU:-host}; fi
    else
        machine=(-M virt -cpu "$CPU")
    fi
    set +e
    # shellcheck disable=SC2086
    timeout --kill-after=10 "$TIMEOUT" "$QEMU" -accel "$accel" "${machine[@]}" -smp 2 -m "$MEM" \
        -nographic -no-reboot -nodefaults -serial stdio -display none \
        -kernel "$KDIR/kernel" -initrd "$SD/work/initrd.gz" \
        -append "console=$CONSOLE panic=-1 oops=panic $append" "$@" ${HIL_QEMU_ARGS:-} </dev/null 2>&1 |
        stdbuf -oL tr -d '\r' | tee "$log_file"
    qemu_rc=${PIPESTATUS[0]}
    set -e
}

# 2. The root file system.
ROOTTAR=$SD/root.tar
INCLUDE=systemd,udev,kmod,procps,v4l-utils,busybox-static
if [ ! -s "$ROOTTAR" ]; then
    command -v debootstrap >/dev/null || die "debootstrap missing: make setup-apt"
    rm -rf "$SD/bootstrap"
    mkdir -p "$SD/bootstrap" "$SD/work"
    broot=$SD/bootstrap/root
    host_arch=$(dpkg --print-architecture)
    if [ "$ARCH" = "$host_arch" ]; then
        log "debootstrap bookworm ($ARCH, minbase + $INCLUDE) from $MIRROR"
        debootstrap --variant=minbase --include="$INCLUDE" bookworm "$broot" "$MIRROR" \
            >"$SD/bootstrap/debootstrap.log" 2>&1 || { tail -n 20 "$SD/bootstrap/debootstrap.log" >&2; die "debootstrap failed"; }
        chroot "$broot" apt-get clean
        tar -C "$broot" --numeric-owner --xattrs -cf "$SD/bootstrap/root.tar" .
    else
        log "debootstrap --foreign bookworm ($ARCH, minbase + $INCLUDE) from $MIRROR"
        debootstrap --foreign --arch="$ARCH" --variant=minbase --include="$INCLUDE" bookworm "$broot" "$MIRROR" \
            >"$SD/bootstrap/debootstrap.log" 2>&1 || { tail -n 20 "$SD/bootstrap/debootstrap.log" >&2; die "debootstrap failed"; }
        bb=$(find "$broot/var/cache/apt/archives" -name 'busybox-static_*.deb' | head -1)
        [ -n "$bb" ] || die "debootstrap did not fetch busybox-static"
        dpkg-deb -x "$bb" "$SD/bootstrap/busybox"
        make_initrd "$SD/bootstrap/busybox/bin/busybox" "$SD/work/initrd.gz"
        mkfs.ext4 -q -F -L bootstrap -d "$broot" "$SD/bootstrap/disk.img" 4G
        truncate -s 4G "$SD/bootstrap/root.tar"
        log "debootstrap's second stage in the $ARCH VM (TCG: takes a while)"
        t_boot=$(date +%s)
        boot "$SD/bootstrap/console.log" "hil.mode=bootstrap" \
            -drive file="$SD/bootstrap/disk.img",format=raw,if=virtio \
            -drive file="$SD/bootstrap/root.tar",format=raw,if=virtio
        log "second stage: $(($(date +%s) - t_boot)) s"
        grep -q '^HIL-VERDICT rc=0' "$SD/bootstrap/console.log" ||
            die "the second stage failed (console: $SD/bootstrap/console.log)"
        rm -f "$SD/bootstrap/disk.img"
    fi
    # The tar stream on the raw disk ends at its end-of-archive marker; the zeros after it are never read.
    tar -tf "$SD/bootstrap/root.tar" ./usr/lib/systemd/systemd >/dev/null || die "the bootstrapped root has no systemd"
    mv "$SD/bootstrap/root.tar" "$ROOTTAR"
    rm -rf "$SD/bootstrap"
    log "root ready: $ROOTTAR ($(du -h "$ROOTTAR" | cut -f1))"
fi

if [ -z "$DEB" ]; then
    log "kernel and root cached in $SD ($(($(date +%s) - t_start)) s)"
    exit 0
fi

# 3. This run's root: unpacked, with the test's files added (nothing is executed in it here), as ext4.
WORK=$SD/work
VROOT=$WORK/root
rm -rf "$VROOT"
mkdir -p "$VROOT"
tar -C "$VROOT" --numeric-owner --xattrs -xf "$ROOTTAR"
copy_modules "$VROOT" vivid
printf 'vivid\n' >"$VROOT/etc/modules-load.d/hil-vivid.conf"
# One vivid instance with only a capture node (/dev/video0), as in run.sh.
printf 'options vivid n_devs=1 node_types=0x1\n' >"$VROOT/etc/modprobe.d/hil-vivid.conf"
mkdir -p "$VROOT/hil"
cp "$DEB" "$VROOT/hil/ocellus.deb"
"$CC" -O2 -std=c99 -Wall -Wextra -Werror -static -I"$ROOT/include" "$ROOT/tests/c/shm_follow.c" -o "$VROOT/hil/shm-follow"
install -m 0755 "$SRC/driver.sh" "$VROOT/hil/driver.sh"
cp "$SRC"/*.toml "$VROOT/hil/"
cp "$ROOT/bsp/udev/99-ocellus-cameras.rules" "$VROOT/hil/"
[ -z "${HIL_DROPIN:-}" ] || cp "$HIL_DROPIN" "$VROOT/hil/extra-dropin.conf"
[ -z "${HIL_READER_ARGS:-}" ] || printf '%s\n' "$HIL_READER_ARGS" > "$VROOT/hil/reader-args"
printf 'HIL_ARCH=%s\nHIL_CHECKS="%s"\n' "$ARCH" "${HIL_CHECKS:-}" >"$VROOT/hil/env"
install -m 0644 "$SRC/hil-driver.service" "$VROOT/etc/systemd/system/hil-driver.service"
ln -sf /etc/systemd/system/hil-driver.service "$VROOT/etc/systemd/system/multi-user.target.wants/hil-driver.service"
# Quiet and deterministic: no login prompts on the console, no timers firing during the checks.
for unit in "serial-getty@$CONSOLE.service" getty@tty1.service apt-daily.timer apt-daily-upgrade.timer \
    e2scrub_all.timer fstrim.timer systemd-tmpfiles-clean.timer; do
    ln -sf /dev/null "$VROOT/etc/systemd/system/$unit"
done
echo hil >"$VROOT/etc/hostname"
# A machine id, so systemd does not treat the boot as a first boot (systemd-firstboot would prompt).
od -An -N16 -tx1 /dev/urandom | tr -d ' \n' >"$VROOT/etc/machine-id"
echo >>"$VROOT/etc/machine-id"
mkfs.ext4 -q -F -L hilroot -d "$VROOT" "$WORK/root.img" 3G
make_initrd "$VROOT/bin/busybox" "$WORK/initrd.gz"
t_image=$(date +%s)
log "image ready after $((t_image - t_start)) s"

# 4. Boot into systemd; the driver's verdict.
log "booting ($QEMU, -cpu $CPU, $MEM, watchdog $TIMEOUT s)"
boot "$WORK/console.log" "quiet loglevel=3 hil.mode=boot" -drive file="$WORK/root.img",format=raw,if=virtio
t_end=$(date +%s)
log "VM ran $((t_end - t_image)) s; whole run $((t_end - t_start)) s; console log: $WORK/console.log"

if [ "$qemu_rc" -eq 124 ] || [ "$qemu_rc" -eq 137 ]; then
    log "FAILED: the VM did not finish within $TIMEOUT s (watchdog killed qemu)"
    exit 1
fi
verdict=$(sed -n 's/^HIL-VERDICT rc=\([0-9]*\)$/\1/p' "$WORK/console.log" | tail -1)
# amd64: isa-debug-exit carries the verdict even when the console line is lost to the power-off.
if [ -z "$verdict" ] && [ "$ARCH" = amd64 ] && [ $((qemu_rc % 2)) -eq 1 ]; then verdict=$((qemu_rc >> 1)); fi
if [ -z "$verdict" ]; then
    log "FAILED: the VM stopped without a verdict (qemu exit $qemu_rc: kernel panic, boot failure or the driver died)"
    exit 1
fi
if [ "$ARCH" = amd64 ] && [ $((qemu_rc % 2)) -eq 1 ] && [ $((qemu_rc >> 1)) -ne "$verdict" ]; then
    log "FAILED: isa-debug-exit says $((qemu_rc >> 1)) but the console says $verdict"
    exit 1
fi
if [ "$verdict" -ne 0 ]; then
    log "FAILED: $verdict checks failed in the VM:"
    grep -a 'hil-systemd: \(FAIL\|NOT RUN\)' "$WORK/console.log" >&2 || true
    exit 1
fi
log "passed"
