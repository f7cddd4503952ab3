#!/bin/sh
# Builds the ocellus Debian package from an already built binary (no compilation here):
#
#   bsp/debian/build-deb.sh ARCH BINARY OUTDIR      ARCH = amd64 | arm64
#
# writes OUTDIR/ocellus_<version>-1_<ARCH>.deb and prints its path. The version is Cargo.toml's. Depends is
# computed from the binary: each shared library it needs maps to its Debian package, and the highest
# GLIBC_/GCC_ symbol version it uses gives the minimum version (what dpkg-shlibdeps derives from the
# symbols files, which are not installed for a cross architecture).
#
# Layout: /usr/bin/ocellus, /lib/systemd/system/ocellus.service, /etc/ocellus/ocellus.toml (conffile),
# /usr/share/ocellus/models/demo, /usr/include/ocellus/shm.h, /usr/lib/sysusers.d and tmpfiles.d entries,
# the Python reader as /usr/share/ocellus/python/ocellus_shm.py (PYTHONPATH; no Python dependency), docs and examples in
# /usr/share/doc/ocellus.
set -eu

die() {
    echo "build-deb.sh: $*" >&2
    exit 1
}

[ $# -eq 3 ] || die "usage: build-deb.sh amd64|arm64 BINARY OUTDIR"
arch=$1
binary=$2
outdir=$3
src=$(cd "$(dirname "$0")/../.." && pwd)

case "$arch" in
    amd64) machine="X86-64" strip=strip ;;
    arm64) machine="AArch64" strip=aarch64-linux-gnu-strip ;;
    *) die "unknown architecture '$arch' (expected amd64 or arm64)" ;;
esac
[ -f "$binary" ] || die "$binary does not exist: build it first (make build-aarch64 / cargo build --release)"
readelf -h "$binary" | grep -q "Machine:.*$machine" ||
    die "$binary is not an $arch executable (readelf -h says: $(readelf -h "$binary" | sed -n 's/ *Machine: *//p'))"
command -v "$strip" >/dev/null || die "$strip not found: run make setup-cross"

version=$(sed -n '/^\[package\]/,/^\[/s/^version *= *"\(.*\)"/\1/p' "$src/Cargo.toml")
[ -n "$version" ] || die "no version in $src/Cargo.toml [package]"
debversion="$version-1"
maintainer="ocellus developers <ocellus@example.org>"

# Depends from the binary's dynamic section and symbol versions.
needed=$(readelf -d "$binary" | sed -n 's/.*(NEEDED).*\[\(.*\)\]/\1/p')
glibc=$(readelf -V "$binary" | grep -oE 'GLIBC_[0-9]+(\.[0-9]+)+' | sed 's/GLIBC_//' | sort -uV | tail -n1)
gcc=$(readelf -V "$binary" | grep -oE 'GCC_[0-9]+(\.[0-9]+)+' | sed 's/GCC_//' | sort -uV | tail -n1 |
    cut -d. -f1,2)
depends=""
add_depend() {
    case ", $depends, " in *", $1"*) return ;; esac
    depends="${depends:+$depends, }$1"
}
for lib in $needed; do
    case "$lib" in
        libc.so.6 | libm.so.6 | libpthread.so.0 | libdl.so.2 | librt.so.1 | ld-linux-*.so.*)
            [ -n "$glibc" ] || die "$binary needs $lib but uses no GLIBC_ symbol version"
            add_depend "libc6 (>= $glibc)"
            ;;
        libgcc_s.so.1) add_depend "libgcc-s1 (>= ${gcc:-3.0})" ;;
        *) die "$binary needs $lib, which this script cannot map to a Debian package: add it to the case above" ;;
    esac
done
[ -n "$depends" ] || die "$binary needs no shared library: is it a static build? Depends would be empty"

stage=$(mktemp -d)
chmod 0755 "$stage"
trap 'rm -rf "$stage"' EXIT INT TERM
umask 022

install -d "$stage/DEBIAN" "$stage/usr/bin" "$stage/lib/systemd/system" "$stage/etc/ocellus" \
    "$stage/usr/lib/sysusers.d" "$stage/usr/lib/tmpfiles.d" "$stage/usr/include/ocellus" \
    "$stage/usr/share/ocellus/models" "$stage/usr/share/ocellus/python" \
    "$stage/usr/share/doc/ocellus/examples"

"$strip" --strip-all --remove-section=.comment --remove-section=.note -o "$stage/usr/bin/ocellus" "$binary"
chmod 0755 "$stage/usr/bin/ocellus"
install -m 0644 "$src/bsp/systemd/ocellus.service" "$stage/lib/systemd/system/ocellus.service"
install -m 0644 "$src/bsp/systemd/ocellus.sysusers" "$stage/usr/lib/sysusers.d/ocellus.conf"
install -m 0644 "$src/bsp/systemd/ocellus.tmpfiles" "$stage/usr/lib/tmpfiles.d/ocellus.conf"
install -m 0644 "$src/bsp/debian/ocellus.toml" "$stage/etc/ocellus/ocellus.toml"
install -m 0644 "$src/include/ocellus/shm.h" "$stage/usr/include/ocellus/shm.h"
install -m 0644 "$src/tools/ocellus_tools/shm.py" "$stage/usr/share/ocellus/python/ocellus_shm.py"

# The demo bundle without its reference/ directory (test data for the parity tests, not read at run time).
install -d "$stage/usr/share/ocellus/models/demo"
for f in "$src"/models/demo/*; do
    [ -f "$f" ] && install -m 0644 "$f" "$stage/usr/share/ocellus/models/demo/"
done

doc="$stage/usr/share/doc/ocellus"
for f in deploy.md shm-layout.md manifest.md; do
    [ -f "$src/docs/$f" ] && install -m 0644 "$src/docs/$f" "$doc/$f"
done
install -m 0644 "$src/bsp/ocellus.example.toml" "$doc/examples/ocellus.example.toml"
install -m 0644 "$src/bsp/jetson-orin/ocellus.toml" "$doc/examples/jetson-orin.toml"
install -m 0644 "$src/bsp/jetson-orin/README.md" "$doc/examples/jetson-orin.md"
install -m 0644 "$src/bsp/udev/99-ocellus-cameras.rules" "$doc/examples/99-ocellus-cameras.rules"
cat >"$doc/copyright" <<EOF
Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/
Upstream-Name: ocellus

Files: *
Copyright: 2026 the ocellus authors
License: Apache-2.0
 On Debian systems, the full text of the Apache License version 2.0 can be found in
 /usr/share/common-licenses/Apache-2.0.
EOF
# The changelog's date is the last commit's, so the same tree gives the same package.
date=$(git -C "$src" log -1 --format=%cD 2>/dev/null || date -R)
printf 'ocellus (%s) unstable; urgency=medium\n\n  * Built from the ocellus source tree by bsp/debian/build-deb.sh.\n\n -- %s  %s\n' \
    "$debversion" "$maintainer" "$date" | gzip -9n >"$doc/changelog.Debian.gz"
chmod 0644 "$doc/changelog.Debian.gz" "$doc/copyright"

for s in postinst prerm postrm; do
    install -m 0755 "$src/bsp/debian/$s" "$stage/DEBIAN/$s"
done
echo /etc/ocellus/ocellus.toml >"$stage/DEBIAN/conffiles"
(cd "$stage" && find . -path ./DEBIAN -prune -o -type f -print | sed 's|^\./||' | LC_ALL=C sort |
    xargs md5sum) >"$stage/DEBIAN/md5sums"
installed_size=$(du -sk --exclude=DEBIAN "$stage" | cut -f1)
cat >"$stage/DEBIAN/control" <<EOF
Package: ocellus
Version: $debversion
Architecture: $arch
Maintainer: $maintainer
Installed-Size: $installed_size
Depends: $depends
Suggests: python3-numpy
Section: misc
Priority: optional
Description: real-time vision-language perception runtime for robots
 ocellus captures frames from V4L2 cameras, runs a quantized CLIP/SigLIP-style
 vision encoder and a resampler through tract, scores each frame against the
 robot's text prompts and publishes embeddings, latent tokens and scores in a
 shared-memory segment that the control loop reads without waiting.
 .
 This package holds the ocellus binary, its systemd service (not enabled on
 install), the bundled demo model, the C header and the Python module that
 read the shared-memory segment.
EOF
chmod 0644 "$stage/DEBIAN/control" "$stage/DEBIAN/conffiles" "$stage/DEBIAN/md5sums"

mkdir -p "$outdir"
deb="$outdir/ocellus_${debversion}_$arch.deb"
dpkg-deb --root-owner-group -Zxz --build "$stage" "$deb" >/dev/null
echo "$deb"
