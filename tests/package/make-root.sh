#!/bin/sh
# Creates the throwaway Debian 12 root the package test installs into: debootstrap --variant=minbase plus
# systemd (a robot has it; the postinst uses systemd-sysusers and the test runs systemd-analyze in the root),
# packed as a tarball so each test run unpacks it in seconds. Needs the Debian mirror once; idempotent.
#
#   tests/package/make-root.sh TARBALL
set -eu

[ $# -eq 1 ] || { echo "usage: make-root.sh TARBALL" >&2; exit 2; }
tarball=$1
[ -s "$tarball" ] && exit 0
[ "$(id -u)" -eq 0 ] || { echo "make-root.sh: debootstrap needs root" >&2; exit 1; }
command -v debootstrap >/dev/null || { echo "make-root.sh: debootstrap missing: make setup-apt" >&2; exit 1; }

mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
mkdir -p "$(dirname "$tarball")"
work=$(mktemp -d "$(dirname "$tarball")/root.XXXXXX")
trap 'rm -rf "$work"' EXIT INT TERM
echo "make-root.sh: debootstrap bookworm (minbase + systemd) from $mirror"
debootstrap --variant=minbase --include=systemd bookworm "$work/root" "$mirror" >"$work/debootstrap.log" 2>&1 || {
    tail -n 20 "$work/debootstrap.log" >&2
    echo "make-root.sh: debootstrap failed (log above)" >&2
    exit 1
}
chroot "$work/root" apt-get clean
tar -C "$work/root" --numeric-owner -cf "$work/root.tar" .
mv "$work/root.tar" "$tarball"
echo "make-root.sh: wrote $tarball ($(du -h "$tarball" | cut -f1))"
