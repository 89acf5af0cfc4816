#!/usr/bin/env bash
# Unpacks every .ipk in a directory (default target/dist) and checks its layout and
# metadata: the outer archive, control fields, conffiles, maintainer scripts (run against an
# image root), the installed files with their modes and owners, and that the binary is a
# static executable for the architecture the package claims.
#   packaging/test-packages.sh [DIR]
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
DIR=${1:-$ROOT/target/dist}
failures=0 checks=0 packages=0

fail() { echo "FAIL $(basename "$pkg"): $*" >&2; failures=$((failures + 1)); }
check() { # check <description> <command...>
    local what=$1
    shift
    checks=$((checks + 1))
    "$@" || fail "$what"
}
field() { sed -n "s/^$1: //p" "$w/control/control"; }

shopt -s nullglob
for pkg in "$DIR"/*.ipk; do
    packages=$((packages + 1))
    w=$(mktemp -d)
    mkdir -p "$w/outer" "$w/control" "$w/data"
    check "outer archive is a gzip'd tar" tar -xzf "$pkg" -C "$w/outer"
    check "outer members are debian-binary, data.tar.gz, control.tar.gz in that order" \
        test "$(tar -tzf "$pkg" | tr '\n' ' ')" = "./debian-binary ./data.tar.gz ./control.tar.gz "
    check "debian-binary says 2.0" test "$(cat "$w/outer/debian-binary")" = "2.0"
    check "control.tar.gz unpacks" tar -xzf "$w/outer/control.tar.gz" -C "$w/control"
    check "data.tar.gz unpacks" tar -xzf "$w/outer/data.tar.gz" -C "$w/data"

    # Control fields.
    base=$(basename "$pkg" .ipk)
    IFS=_ read -r fname fversion farch <<<"$base"
    for f in Package Version Depends Architecture Installed-Size Description; do
        check "control has $f" grep -q "^$f: ." "$w/control/control"
    done
    check "Package matches the file name" test "$(field Package)" = "$fname"
    check "Version matches the file name" test "$(field Version)" = "$fversion"
    check "Architecture matches the file name" test "$(field Architecture)" = "$farch"
    case "$farch" in
    aarch64_cortex-a53 | aarch64_generic) machine=AArch64 ;;
    arm_cortex-a7_neon-vfpv4) machine=ARM ;;
    x86_64) machine="Advanced Micro Devices X86-64" ;;
    mipsel_24kc) machine="MIPS R3000" ;;
    *) machine=unknown; fail "unknown OpenWrt architecture $farch" ;;
    esac
    size=$(find "$w/data" -type f -exec stat -c %s {} + | awk '{s += $1} END {print s}')
    check "Installed-Size is the size of the installed files" test "$(field Installed-Size)" = "$size"
    check "conffiles lists exactly /etc/config/ferry" test "$(cat "$w/control/conffiles")" = "/etc/config/ferry"

    # Installed files: exactly these, owned by root, with these modes.
    check "data holds exactly the binary, init script and config" test \
        "$(tar -tzvf "$w/outer/data.tar.gz" | awk '$1 !~ /^d/ {print $1, $2, $6}' | sort -k3 | tr '\n' ';')" = \
        "-rw------- 0/0 ./etc/config/ferry;-rwxr-xr-x 0/0 ./etc/init.d/ferry;-rw-r--r-- 0/0 ./lib/upgrade/keep.d/ferry;-rwxr-xr-x 0/0 ./usr/bin/ferry;"
    check "the init script is ours" cmp -s "$w/data/etc/init.d/ferry" "$ROOT/openwrt/ferry/files/ferry.init"
    check "the config is ours" cmp -s "$w/data/etc/config/ferry" "$ROOT/openwrt/ferry/files/ferry.config"
    check "sysupgrade keeps the default data directory" test "$(cat "$w/data/lib/upgrade/keep.d/ferry")" = "/etc/ferry/"
    check "the binary is an ELF executable for $machine" \
        grep -q "Machine: *$machine" <(readelf -h "$w/data/usr/bin/ferry")
    check "the binary is static (no program interpreter)" \
        bash -c "! readelf -lW '$w/data/usr/bin/ferry' | grep -q INTERP"

    # Maintainer scripts: executable, and into an image root they enable without starting.
    for s in postinst prerm; do
        check "$s is executable" test -x "$w/control/$s"
    done
    if command -v shellcheck >/dev/null; then
        check "maintainer scripts pass shellcheck" shellcheck -s sh "$w/control/postinst" "$w/control/prerm"
    fi
    mkdir -p "$w/image"
    check "postinst into an image root succeeds" env IPKG_INSTROOT="$w/image" sh "$w/control/postinst"
    check "postinst enables the service in the image root" \
        test "$(readlink "$w/image/etc/rc.d/S95ferry")" = "../init.d/ferry"
    check "prerm in an image root does nothing" env IPKG_INSTROOT="$w/image" sh "$w/control/prerm"
    check "postinst starts the service on a live system" grep -q '^/etc/init.d/ferry start$' "$w/control/postinst"
    check "prerm stops and disables it" \
        test "$(grep -c '^/etc/init.d/ferry \(stop\|disable\)$' "$w/control/prerm")" = 2
    rm -rf "$w"
done
if [ "$packages" = 0 ]; then
    echo "test-packages: no .ipk in $DIR (run scripts/cross-build.sh first)" >&2
    exit 1
fi
echo "test-packages: $packages packages, $checks checks, $failures failed"
[ "$failures" = 0 ]
