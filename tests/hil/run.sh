#!/usr/bin/env bash
# Hardware-in-the-loop test in a VM: real V4L2 capture against the kernel's virtual camera (vivid) and a
# v4l2loopback device, no camera needed. See docs/hil.md.
#
#   tests/hil/run.sh [TEST-ARGS...]     e.g. tests/hil/run.sh vivid_  (a name filter, as for cargo test)
#
# Steps (each cached under $CACHE/hil, so a second run downloads nothing and repacks in seconds):
#   1. apt-get download the pinned Debian kernel, its headers and v4l2loopback-dkms (.debs, no install);
#   2. unpack them, take the uncompressed vmlinux out of the bzImage, build v4l2loopback against the headers;
#   3. cargo builds the test binary tests/hil.rs for the host; it is stripped and copied with the shared
#      libraries ldd lists (the glibc loader and libs) into a busybox initramfs with the vivid modules, the
#      demo model and tests/hil/init;
#   4. qemu boots it (TCG; KVM only where the CPU has vmx/svm), the tests run against /dev/video0 (vivid) and
#      /dev/video1 (v4l2loopback), and the verdict leaves through isa-debug-exit (qemu exits with rc*2+1).
# Exit status: 0 when every test passed; non-zero on a failure, a crash or the watchdog (HIL_TIMEOUT seconds).
#
# Environment: CACHE (default ~/.cache/ocellus), HIL_KERNEL_ABI (default 6.1.0-56-amd64), HIL_TIMEOUT (600),
# HIL_MEM (1G), HIL_CPU (qemu64), HIL_QEMU_ARGS (extra qemu arguments), CARGO_TARGET_DIR ($CACHE/target).
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
CACHE=${CACHE:-$HOME/.cache/ocellus}
HIL=$CACHE/hil
ABI=${HIL_KERNEL_ABI:-6.1.0-56-amd64}
TIMEOUT=${HIL_TIMEOUT:-600}
MEM=${HIL_MEM:-1G}
# qemu64 (SSE2): tract's AVX2/FMA kernels, chosen at run time on `-cpu max`, run 4x slower under TCG.
CPU=${HIL_CPU:-qemu64}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$CACHE/target}

KDIR=$HIL/kernel-$ABI        # unpacked packages, vmlinux, v4l2loopback.ko
WORK=$HIL/work               # initramfs staging, console log (rebuilt every run)
KROOT=$KDIR/root
MODDIR=$KROOT/lib/modules/$ABI

log() { printf 'hil: %s\n' "$*" >&2; }
die() { printf 'hil: error: %s\n' "$*" >&2; exit 2; }

for tool in qemu-system-x86_64 busybox cpio depmod modprobe xz gzip dpkg-deb apt-get make gcc-12 strip ldd; do
    command -v "$tool" >/dev/null 2>&1 ||
        die "'$tool' not found: run 'make setup' (installs APT_PACKAGES: qemu-system-x86 busybox-static cpio kmod xz-utils gcc-12 ...)"
done
! ldd "$(command -v busybox)" >/dev/null 2>&1 ||
    die "busybox is not statically linked: install busybox-static"

t_start=$(date +%s)

# 1. Packages: the kernel image (vivid is a module of the stock kernel), headers and kbuild for building
#    v4l2loopback against it, and v4l2loopback's source.
series=${ABI%%.0-*}                       # 6.1
flavour=${ABI##*-}                        # amd64
pkgs=("linux-image-$ABI" "linux-headers-$ABI" "linux-headers-${ABI%-"$flavour"}-common" "linux-kbuild-$series"
      v4l2loopback-dkms)
DEBS=$HIL/debs/$ABI
if [ ! -e "$DEBS/.done" ]; then
    mkdir -p "$DEBS"
    log "downloading ${pkgs[*]}"
    if ! (cd "$DEBS" && apt-get download "${pkgs[@]}" 2>&1 | { grep -v '^W: Download is performed unsandboxed' || true; }); then
        newest=$(apt-cache search --names-only "^linux-image-$series\.0-[0-9]+-$flavour\$" 2>/dev/null |
                 awk '{print $1}' | sort -V | tail -1)
        die "apt-get download failed for ${pkgs[*]} (run 'apt-get update'; if Debian dropped this kernel, set HIL_KERNEL_ABI=${newest#linux-image-} or newer)"
    fi
    touch "$DEBS/.done"
fi

# 2. Unpack, vmlinux, module dependencies, v4l2loopback.
if [ ! -e "$KDIR/.unpacked" ]; then
    rm -rf "$KDIR"
    mkdir -p "$KROOT"
    log "unpacking $(ls "$DEBS"/*.deb | wc -l) packages into $KDIR"
    for deb in "$DEBS"/*.deb; do dpkg-deb -x "$deb" "$KROOT"; done
    # The headers' Makefile includes the common headers by absolute path (/usr/src/...): point it here.
    sed -i "s|/usr/src/|$KROOT/usr/src/|" "$KROOT/usr/src/linux-headers-$ABI/Makefile"
    # Booting the uncompressed ELF (PVH entry) saves ~6 s of in-VM decompression: it is the xz stream
    # that starts at the first xz magic (fd 37 7a 58 5a 00) inside the bzImage.
    vmlinuz=$KROOT/boot/vmlinuz-$ABI
    off=$({ LC_ALL=C grep -aobUP -m1 '\xfd7zXZ\x00' "$vmlinuz" || true; } | head -1 | cut -d: -f1)
    [ -n "$off" ] || die "no xz stream in $vmlinuz (is the kernel built with CONFIG_KERNEL_XZ?)"
    # xz stops reading at the end of its stream, so tail may die of SIGPIPE: check the result instead.
    { tail -c +"$((off + 1))" "$vmlinuz" || true; } | xz -dc --single-stream >"$KDIR/vmlinux"
    [ "$(head -c 4 "$KDIR/vmlinux" | od -An -c | tr -d ' ')" = '177ELF' ] ||
        die "the xz stream in $vmlinuz is not an ELF kernel"
    touch "$KDIR/.unpacked"
fi
if [ ! -e "$KDIR/.v4l2loopback" ]; then
    srcs=("$KROOT"/usr/src/v4l2loopback-*)
    src=${srcs[0]}
    rm -rf "$KDIR/v4l2loopback" && cp -r "$src" "$KDIR/v4l2loopback"
    log "building v4l2loopback $(basename "$src") against linux-headers-$ABI"
    make -s -C "$KROOT/usr/src/linux-headers-$ABI" M="$KDIR/v4l2loopback" modules >"$KDIR/v4l2loopback.log" 2>&1 ||
        { cat "$KDIR/v4l2loopback.log" >&2; die "building v4l2loopback failed (log above)"; }
    mkdir -p "$MODDIR/extra"
    cp "$KDIR/v4l2loopback/v4l2loopback.ko" "$MODDIR/extra/"
    depmod -b "$KROOT" "$ABI"
    touch "$KDIR/.v4l2loopback"
fi

# 3. The test binary, built for the host target like every other test (see docs/hil.md for why not musl).
log "building the test binary (cargo test --release --no-run --test hil)"
exe=$(cd "$ROOT" && cargo test --release --locked --no-run --test hil --message-format=json-render-diagnostics |
      sed -n '/"name":"hil"/s/.*"executable":"\([^"]*\)".*/\1/p' | tail -1)
[ -n "$exe" ] && [ -x "$exe" ] || die "cargo did not produce the hil test binary"

# The initramfs: busybox, /init, the modules vivid and v4l2loopback need, the stripped test binary with its
# shared libraries, and the repository files the tests read (the demo model, golden data).
rm -rf "$WORK/initramfs"
STAGE=$WORK/initramfs
mkdir -p "$STAGE"/{bin,dev,proc,sys,hil,repo/tests/hil,lib/modules/"$ABI"}
cp "$(command -v busybox)" "$STAGE/bin/busybox"
install -m 0755 "$HERE/init" "$STAGE/init"
for module in vivid v4l2loopback; do
    modprobe -d "$KROOT" -S "$ABI" --show-depends "$module" | awk '$1 == "insmod" {print $2}'
done | sort -u | while read -r ko; do
    rel=${ko#"$KROOT/"}
    mkdir -p "$STAGE/$(dirname "$rel")"
    cp "$ko" "$STAGE/$rel"
done
cp "$MODDIR"/modules.order "$MODDIR"/modules.builtin "$MODDIR"/modules.builtin.modinfo "$STAGE/lib/modules/$ABI/"
depmod -b "$STAGE" "$ABI"
strip -o "$STAGE/hil/hil-test" "$exe"
ldd "$exe" | awk '/=>/ {print $3} /^\t\// {print $1}' | while read -r lib; do
    [ -e "$lib" ] || continue
    mkdir -p "$STAGE$(dirname "$lib")"
    cp -L "$lib" "$STAGE$lib"
done
mkdir -p "$STAGE/repo/models"
cp -r "$ROOT/models/demo" "$STAGE/repo/models/demo"
cp "$HERE"/*.toml "$STAGE/repo/tests/hil/" 2>/dev/null || true
# Every test of tests/hil.rs is #[ignore]d on the host (no camera there); the VM runs them all, one at a
# time (they share the devices).
printf 'HIL_TEST_ARGS="%s"\n' "--ignored --test-threads=1 --nocapture ${*:-}" >"$STAGE/hil/env"
(cd "$STAGE" && find . -print0 | cpio --null -o -H newc --quiet | gzip -1) >"$WORK/initrd.gz"
log "initramfs $(du -h "$WORK/initrd.gz" | cut -f1) ready after $(($(date +%s) - t_start)) s"

# 4. Boot. TCG runs vivid in real time; KVM only where the CPU offers it.
accel="tcg,thread=multi"
if grep -qwE 'vmx|svm' /proc/cpuinfo && [ -w /dev/kvm ]; then accel=kvm CPU=${HIL_CPU:-host}; fi
log "booting ($accel, -cpu $CPU, $MEM, watchdog ${TIMEOUT} s)"
t_boot=$(date +%s)
set +e
# shellcheck disable=SC2086
timeout --kill-after=10 "$TIMEOUT" qemu-system-x86_64 -accel "$accel" -cpu "$CPU" -smp 2 -m "$MEM" \
    -nographic -no-reboot -nodefaults -serial stdio -display none \
    -kernel "$KDIR/vmlinux" -initrd "$WORK/initrd.gz" \
    -append "console=ttyS0 quiet loglevel=3 panic=-1 oops=panic" \
    -device isa-debug-exit,iobase=0xf4,iosize=0x04 ${HIL_QEMU_ARGS:-} </dev/null 2>&1 |
    tr -d '\r' | tee "$WORK/console.log"
qemu_rc=${PIPESTATUS[0]}
set -e
t_end=$(date +%s)
log "VM ran $((t_end - t_boot)) s; whole run $((t_end - t_start)) s; console log: $WORK/console.log"

if [ "$qemu_rc" -eq 124 ] || [ "$qemu_rc" -eq 137 ]; then
    log "FAILED: the VM did not finish within $TIMEOUT s (watchdog killed qemu)"
    exit 1
fi
if [ $((qemu_rc % 2)) -ne 1 ]; then
    log "FAILED: the VM stopped without a verdict (qemu exit $qemu_rc: kernel panic or the init died)"
    exit 1
fi
rc=$((qemu_rc >> 1))
if [ "$rc" -ne 0 ]; then
    log "FAILED: the tests in the VM exited with $rc"
    exit 1
fi
log "passed"
