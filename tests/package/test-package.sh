#!/bin/sh
# Package test: checks both .debs, installs the amd64 one into a throwaway Debian 12 root (made once by
# make-root.sh) and checks what the install did, runs the installed binary there, verifies the unit with
# systemd-analyze, upgrades and purges. Needs root (chroot, mount); no network.
#
#   tests/package/test-package.sh ROOT_TARBALL AMD64_DEB ARM64_DEB
#
# Every check prints "ok: ..." or "FAIL: ..."; the exit code is the number of failures (capped at 100).
set -eu

[ $# -eq 3 ] || { echo "usage: test-package.sh ROOT_TARBALL AMD64_DEB ARM64_DEB" >&2; exit 2; }
tarball=$1
amd64_deb=$2
arm64_deb=$3
[ "$(id -u)" -eq 0 ] || { echo "test-package.sh: needs root (chroot, mount /proc)" >&2; exit 2; }
[ -s "$tarball" ] || { echo "test-package.sh: $tarball missing: run make setup-package" >&2; exit 2; }
for d in "$amd64_deb" "$arm64_deb"; do
    [ -s "$d" ] || { echo "test-package.sh: $d missing: run make package" >&2; exit 2; }
done

failures=0
ok() { echo "ok: $*"; }
fail() {
    echo "FAIL: $*"
    failures=$((failures + 1))
}
# check DESCRIPTION COMMAND...: runs the command, ok if it succeeds.
check() {
    what=$1
    shift
    if out=$("$@" 2>&1); then ok "$what"; else
        fail "$what"
        printf '%s\n' "$out" | sed 's/^/    /' | tail -n 20
    fi
}

work=$(mktemp -d)
root="$work/root"
cleanup() {
    umount "$root/proc" 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT INT TERM

# --- Both packages, without installing -----------------------------------------------------------------------
files_of() { dpkg-deb -c "$1" | awk '{print $6}' | sed 's|^\./||' | grep -v '/$' | LC_ALL=C sort; }
files_of "$amd64_deb" >"$work/amd64.files"
files_of "$arm64_deb" >"$work/arm64.files"
for deb in "$amd64_deb" "$arm64_deb"; do
    arch=$(dpkg-deb -f "$deb" Architecture)
    name=$(basename "$deb")
    case "$name" in *"_$arch.deb") ok "$name: Architecture $arch" ;; *) fail "$name: Architecture is $arch" ;; esac
    x="$work/x-$arch"
    dpkg-deb -x "$deb" "$x"
    machine=$(readelf -h "$x/usr/bin/ocellus" | sed -n 's/ *Machine: *//p')
    case "$arch:$machine" in
        amd64:*X86-64* | arm64:*AArch64*) ok "$name: /usr/bin/ocellus is $machine" ;;
        *) fail "$name: /usr/bin/ocellus is $machine" ;;
    esac
    # (.debug_gdb_scripts is loaded code, Rust's pretty-printer hint, and stays.)
    if readelf -S -W "$x/usr/bin/ocellus" | grep -qE '\.(symtab|debug_info|debug_line) '; then
        fail "$name: /usr/bin/ocellus is not stripped"
    else ok "$name: /usr/bin/ocellus is stripped"; fi
    glibc=$(readelf -V "$x/usr/bin/ocellus" | grep -oE 'GLIBC_[0-9.]+' | sed 's/GLIBC_//' | sort -uV | tail -n1)
    case "$(dpkg-deb -f "$deb" Depends)" in
        *"libc6 (>= $glibc)"*) ok "$name: Depends libc6 (>= $glibc), the newest glibc symbol version it uses" ;;
        *) fail "$name: Depends '$(dpkg-deb -f "$deb" Depends)' lacks libc6 (>= $glibc)" ;;
    esac
    [ "$(dpkg-deb -f "$deb" Version)" = "$(dpkg-deb -f "$amd64_deb" Version)" ] ||
        fail "$name: version differs from the amd64 package"
    dpkg-deb -e "$deb" "$x/DEBIAN"
    if (cd "$x" && md5sum --quiet -c DEBIAN/md5sums); then ok "$name: md5sums match"; else fail "$name: md5sums"; fi
done
if cmp -s "$work/amd64.files" "$work/arm64.files"; then
    ok "both packages hold the same $(wc -l <"$work/amd64.files") files"
else
    fail "the packages hold different files:"
    diff "$work/amd64.files" "$work/arm64.files" | sed 's/^/    /'
fi

# dpkg-shlibdeps (the symbols files of the host's libraries) must not ask for more than the amd64 Depends says.
mkdir -p "$work/shl/debian"
printf 'Source: ocellus\n\nPackage: ocellus\nArchitecture: any\n' >"$work/shl/debian/control"
shlibs=$(cd "$work/shl" && dpkg-shlibdeps -O "$work/x-amd64/usr/bin/ocellus" 2>/dev/null | sed -n 's/^shlibs:Depends=//p')
depends=$(dpkg-deb -f "$amd64_deb" Depends)
missing=""
for dep in $(printf '%s' "$shlibs" | tr -d ' ' | tr ',' ' '); do
    case ",$(printf '%s' "$depends" | tr -d ' ')," in *",$dep,"*) ;; *) missing="$missing $dep" ;; esac
done
if [ -z "$missing" ]; then ok "amd64 Depends equals dpkg-shlibdeps' ($shlibs)"; else
    fail "amd64 Depends '$depends' lacks dpkg-shlibdeps':$missing"
fi

# The arm64 binary, run under qemu-user from the unpacked package: the built-in default config finds the
# installed models through ../share/ocellus beside the executable (run from a directory without models/).
if command -v qemu-aarch64-static >/dev/null; then
    if out=$(cd "$work" && qemu-aarch64-static -L /usr/aarch64-linux-gnu "$work/x-arm64/usr/bin/ocellus" check 2>&1) &&
        printf '%s' "$out" | grep -q "x-arm64/usr/bin/../share/ocellus/models/demo/manifest.toml"; then
        ok "arm64 ocellus check (qemu-user) passes with the packaged models"
    else
        fail "arm64 ocellus check (qemu-user)"
        printf '%s\n' "$out" | sed 's/^/    /' | tail -n 20
    fi
else
    fail "qemu-aarch64-static missing: make setup-cross"
fi

# --- Install the amd64 package into a throwaway Debian 12 root -----------------------------------------------
mkdir "$root"
tar -C "$root" -xf "$tarball"
mount -t proc proc "$root/proc"
cp "$amd64_deb" "$root/tmp/ocellus.deb"
in_root() { chroot "$root" "$@"; }
check "dpkg -i (Depends satisfied by Debian 12's libc6 and libgcc-s1, postinst runs)" \
    in_root env DEBIAN_FRONTEND=noninteractive dpkg -i /tmp/ocellus.deb

status=$(in_root dpkg-query -W -f='${Status}' ocellus 2>&1 || true)
[ "$status" = "install ok installed" ] && ok "dpkg status: $status" || fail "dpkg status: $status"
for f in /usr/bin/ocellus /lib/systemd/system/ocellus.service /etc/ocellus/ocellus.toml \
    /usr/share/ocellus/models/demo/manifest.toml /usr/share/ocellus/models/demo/vision.fp32.onnx \
    /usr/share/ocellus/models/demo/vision.int8.onnx /usr/include/ocellus/shm.h \
    /usr/lib/sysusers.d/ocellus.conf /usr/lib/tmpfiles.d/ocellus.conf \
    /usr/share/ocellus/python/ocellus_shm.py /usr/share/doc/ocellus/copyright \
    /usr/share/doc/ocellus/examples/jetson-orin.toml; do
    [ -f "$root$f" ] && ok "installed $f" || fail "not installed: $f"
done
[ -x "$root/usr/bin/ocellus" ] && ok "/usr/bin/ocellus is executable" || fail "/usr/bin/ocellus is not executable"
case "$(in_root dpkg-query -W -f='${Conffiles}' ocellus)" in
    *"/etc/ocellus/ocellus.toml "*) ok "/etc/ocellus/ocellus.toml is a conffile" ;;
    *) fail "/etc/ocellus/ocellus.toml is not a conffile" ;;
esac
[ ! -e "$root/usr/share/ocellus/models/demo/reference" ] && ok "test reference data not shipped" ||
    fail "models/demo/reference was shipped"

# The user and its directory, made by the postinst (systemd-sysusers, systemd-tmpfiles).
if in_root getent passwd ocellus >"$work/passwd"; then
    ok "user ocellus: $(cat "$work/passwd")"
    IFS=: read -r _ _ uid _ _ home shell <"$work/passwd"
    [ "$uid" -lt 1000 ] && ok "ocellus is a system user (uid $uid)" || fail "ocellus has uid $uid (not a system user)"
    [ "$home:$shell" = "/var/lib/ocellus:/usr/sbin/nologin" ] && ok "home /var/lib/ocellus, no login shell" ||
        fail "home:shell is $home:$shell"
else
    fail "user ocellus was not created"
fi
groups=$(in_root id -nG ocellus 2>&1 || true)
case " $groups " in *" video "*) ok "ocellus is in group video ($groups)" ;; *) fail "ocellus groups: $groups" ;; esac
perms=$(in_root stat -c '%U:%G %a' /var/lib/ocellus 2>&1 || true)
[ "$perms" = "ocellus:ocellus 750" ] && ok "/var/lib/ocellus is $perms" || fail "/var/lib/ocellus is '$perms'"
in_root test -e /etc/systemd/system/multi-user.target.wants/ocellus.service &&
    fail "the service was enabled on install" || ok "the service is not enabled on install"

# The installed binary, as the service user, with the installed config and models.
check "ocellus check --config /etc/ocellus/ocellus.toml (as user ocellus)" \
    in_root setpriv --reuid=ocellus --regid=ocellus --init-groups ocellus check --config /etc/ocellus/ocellus.toml
out=$(cd / && in_root sh -c 'cd / && ocellus check' 2>&1 || true)
case "$out" in
    *"/usr/bin/../share/ocellus/models/demo/manifest.toml"*) ok "ocellus check without --config finds the installed models" ;;
    *) fail "ocellus check without --config:"; printf '%s\n' "$out" | sed 's/^/    /' | tail -n 10 ;;
esac
if out=$(in_root setpriv --reuid=ocellus --regid=ocellus --init-groups sh -c \
    'cd /var/lib/ocellus && ocellus run --config /etc/ocellus/ocellus.toml --frames 20 --no-shm --status-interval 0 --summary-json run.json' 2>&1) &&
    grep -q '"frames"' "$root/var/lib/ocellus/run.json"; then
    ok "ocellus run --frames 20 as user ocellus, summary written to its working directory"
else
    fail "ocellus run as user ocellus"
    printf '%s\n' "$out" | sed 's/^/    /' | tail -n 20
fi

# The unit, against the root's systemd (252) with the installed binary.
check "systemd-analyze verify ocellus.service" systemd-analyze verify --root="$root" ocellus.service
check "systemd-analyze verify (inside the root)" in_root systemd-analyze verify ocellus.service
# Hardening: systemd's exposure score (0 = fully sandboxed, 10 = none) stays at "SAFE"/"OK" (<= 1.5).
check "systemd-analyze security --offline: exposure <= 1.5" \
    systemd-analyze security --offline=true --threshold=15 "$root/lib/systemd/system/ocellus.service"

# Upgrade over itself keeps an edited conffile; purge removes config, state and files, keeps the user.
echo "# edited by test-package.sh" >>"$root/etc/ocellus/ocellus.toml"
check "dpkg -i again (upgrade path)" in_root env DEBIAN_FRONTEND=noninteractive dpkg -i --force-confold /tmp/ocellus.deb
grep -q "edited by test-package.sh" "$root/etc/ocellus/ocellus.toml" && ok "upgrade kept the edited conffile" ||
    fail "upgrade replaced the edited conffile"
check "dpkg --purge ocellus" in_root dpkg --purge ocellus
for f in /usr/bin/ocellus /etc/ocellus /var/lib/ocellus /usr/share/ocellus /lib/systemd/system/ocellus.service; do
    [ ! -e "$root$f" ] && ok "purged $f" || fail "left after purge: $f"
done

# The postinst's fallback where systemd-sysusers and systemd-tmpfiles are missing: useradd and install -d.
in_root userdel ocellus >/dev/null 2>&1 || true
in_root groupdel ocellus >/dev/null 2>&1 || true
for t in systemd-sysusers systemd-tmpfiles; do mv "$root/usr/bin/$t" "$root/usr/bin/$t.hidden"; done
check "dpkg -i without systemd-sysusers (useradd fallback)" \
    in_root env DEBIAN_FRONTEND=noninteractive dpkg -i /tmp/ocellus.deb
for t in systemd-sysusers systemd-tmpfiles; do mv "$root/usr/bin/$t.hidden" "$root/usr/bin/$t"; done
fallback="$(in_root getent passwd ocellus | cut -d: -f6,7) $(in_root id -nG ocellus 2>&1) $(in_root stat -c '%U:%G %a' /var/lib/ocellus 2>&1)"
case "$fallback" in
    "/var/lib/ocellus:/usr/sbin/nologin ocellus video ocellus:ocellus 750") ok "fallback made the same user, groups and directory" ;;
    *) fail "fallback: $fallback" ;;
esac

# --- lintian on both packages: errors fail the test, warnings are printed --------------------------------------
if command -v lintian >/dev/null; then
    for deb in "$amd64_deb" "$arm64_deb"; do
        if out=$(lintian --fail-on error --suppress-tags-from-file "$(dirname "$0")/lintian-overrides" "$deb" 2>&1); then
            ok "lintian $(basename "$deb"): no errors"
        else
            fail "lintian $(basename "$deb")"
        fi
        printf '%s\n' "$out" | grep -v 'running with root privileges' | sed 's/^/    /'
    done
else
    fail "lintian missing: make setup-apt"
fi

if [ "$failures" -eq 0 ]; then echo "test-package: all checks passed"; else echo "test-package: $failures checks FAILED"; fi
[ "$failures" -lt 100 ] || failures=100
exit "$failures"
