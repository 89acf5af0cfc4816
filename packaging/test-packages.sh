#!/usr/bin/env bash
# Checks every package in a directory (default target/dist). Each .ipk is unpacked: the
# outer archive, control fields, conffiles, the installed files with their modes and owners,
# that the binary is a static executable for the architecture the package claims, and its
# maintainer scripts run as opkg runs them in a router-like root. Each .apk is installed
# with apk-tools 3 when it is at hand (APK=path; see below).
#   packaging/test-packages.sh [DIR]
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
DIR=${1:-$ROOT/target/dist}
failures=0 checks=0 packages=0 roots_checked=0

fail() { echo "FAIL $(basename "$pkg"): $*" >&2; failures=$((failures + 1)); }
check() { # check <description> <command...>
    local what=$1
    shift
    checks=$((checks + 1))
    "$@" || fail "$what"
}
field() { sed -n "s/^$1: //p" "$w/control/control"; }

# shellcheck source=openwrt/test/lib.sh
. "$ROOT/openwrt/test/lib.sh"

# scripts_in_root <unpacked package>: the maintainer scripts in a router-like root holding the
# package's files (its binary runs here: x86_64).
scripts_in_root() {
    local w=$1 r="$1/root" n
    sh "$ROOT/openwrt/test/mkroot.sh" "$r" "$w/data/usr/bin/ferry" >/dev/null
    cp -a "$w/data/." "$r/"
    mkdir -p "$r/control"
    cp "$w/control/postinst" "$w/control/prerm" "$r/control/"
    export UBUS_LOG="$w/ubus.log" FERRY_RUN_DIR="$w/run" UCI_CONFIG_DIR=''
    : >"$UBUS_LOG"
    sed -i "s|'/etc/ferry'|'$w/data-dir'|" "$r/etc/config/ferry"
    links() { echo "$(readlink "$r/etc/rc.d/S95ferry"),$(readlink "$r/etc/rc.d/K10ferry")"; }
    calls() { grep '^--- ubus call service' "$UBUS_LOG" | awk '{print $5}' | tr '\n' ' '; }
    PKG_UPGRADE=0 in_root "$r" /bin/sh /control/postinst configure || fail "postinst failed"
    check "a new install enables the service" test "$(links)" = "../init.d/ferry,../init.d/ferry"
    check "a new install starts the service" test "$(calls)" = "set "
    in_root "$r" /etc/init.d/ferry disable || fail "disable failed"
    : >"$UBUS_LOG"
    PKG_UPGRADE=1 in_root "$r" /bin/sh /control/prerm upgrade || fail "prerm failed"
    PKG_UPGRADE=1 in_root "$r" /bin/sh /control/postinst configure || fail "postinst failed"
    check "an upgrade leaves a service the user disabled disabled" test "$(links)" = ","
    check "an upgrade stops and starts it" test "$(calls)" = "delete set "
    in_root "$r" /etc/init.d/ferry enable || fail "enable failed"
    PKG_UPGRADE=1 in_root "$r" /bin/sh /control/postinst configure || fail "postinst failed"
    check "an upgrade leaves an enabled service enabled" test "$(links)" = "../init.d/ferry,../init.d/ferry"
    : >"$UBUS_LOG"
    PKG_UPGRADE=0 in_root "$r" /bin/sh /control/prerm remove || fail "prerm failed"
    check "removal disables the service" test "$(links)" = ","
    check "removal stops it" test "$(calls)" = "delete "
    n=$(find "$r/etc/rc.d" -mindepth 1 | wc -l)
    IPKG_NO_SCRIPT=1 in_root "$r" /bin/sh /control/postinst configure || fail "postinst failed"
    check "IPKG_NO_SCRIPT=1 runs nothing" test "$(find "$r/etc/rc.d" -mindepth 1 | wc -l),$(calls)" = "$n,delete "
    # An image root inside the root: its own rc.common and init script.
    mkdir -p "$r/image/etc/rc.d" "$r/image/etc/init.d" "$r/image/lib/functions"
    cp "$r/etc/rc.common" "$r/image/etc/"
    cp "$r/lib/functions.sh" "$r/image/lib/"
    cp "$r/lib/functions/procd.sh" "$r/image/lib/functions/"
    cp "$r/etc/init.d/ferry" "$r/image/etc/init.d/"
    IPKG_INSTROOT=/image in_root "$r" /bin/sh /control/postinst configure || fail "postinst failed"
    check "postinst into an image root enables with both links, starts nothing" \
        test "$(readlink "$r/image/etc/rc.d/S95ferry"),$(readlink "$r/image/etc/rc.d/K10ferry"),$(calls)" = \
        "../init.d/ferry,../init.d/ferry,delete "
    IPKG_INSTROOT=/image in_root "$r" /bin/sh /control/prerm remove || fail "prerm failed"
    check "prerm in an image root disables" test ! -e "$r/image/etc/rc.d/S95ferry"
    unset UBUS_LOG FERRY_RUN_DIR UCI_CONFIG_DIR
    roots_checked=$((roots_checked + 1))
}

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
    case "$fname" in
    ferry-lite) check "ferry-lite provides ferry, conflicts with nothing" \
        test "$(field Provides)/$(field Conflicts)" = "ferry/" ;;
    *) check "ferry conflicts with ferry-lite, provides nothing more" \
        test "$(field Provides)/$(field Conflicts)" = "/ferry-lite" ;;
    esac
    check "conffiles lists exactly /etc/config/ferry" test "$(cat "$w/control/conffiles")" = "/etc/config/ferry"

    # Installed files: exactly these, owned by root, with these modes.
    check "data holds exactly the binary, init script and config" test \
        "$(tar -tzvf "$w/outer/data.tar.gz" | awk '$1 !~ /^d/ {print $1, $2, $6}' | sort -k3 | tr '\n' ';')" = \
        "-rw------- 0/0 ./etc/config/ferry;-rw-r--r-- 0/0 ./etc/hotplug.d/iface/95-ferry;-rwxr-xr-x 0/0 ./etc/init.d/ferry;-rw-r--r-- 0/0 ./lib/upgrade/keep.d/ferry;-rwxr-xr-x 0/0 ./usr/bin/ferry;"
    check "the init script is ours" cmp -s "$w/data/etc/init.d/ferry" "$ROOT/openwrt/ferry/files/ferry.init"
    check "the config is ours" cmp -s "$w/data/etc/config/ferry" "$ROOT/openwrt/ferry/files/ferry.config"
    check "the hotplug script is ours" cmp -s "$w/data/etc/hotplug.d/iface/95-ferry" "$ROOT/openwrt/ferry/files/ferry.hotplug"
    check "sysupgrade keeps the default data directory" test "$(cat "$w/data/lib/upgrade/keep.d/ferry")" = "/etc/ferry/"
    check "the binary is an ELF executable for $machine" \
        grep -q "Machine: *$machine" <(readelf -h "$w/data/usr/bin/ferry")
    check "the binary is static (no program interpreter)" \
        bash -c "! readelf -lW '$w/data/usr/bin/ferry' | grep -q INTERP"

    # Maintainer scripts: executable, and run as opkg runs them (PKG_UPGRADE set for an
    # upgrade) in a root laid out like a router's, as the OpenWrt SDK's generated scripts
    # would be: a new install enables and starts; an upgrade stops and starts and leaves the
    # user's enabled or disabled alone; removal stops and disables; into an image root
    # (IPKG_INSTROOT) they enable through the image's rc.common, both links.
    for s in postinst prerm; do
        check "$s is executable" test -x "$w/control/$s"
    done
    if command -v shellcheck >/dev/null; then
        check "maintainer scripts pass shellcheck" shellcheck -s sh "$w/control/postinst" "$w/control/prerm"
    fi
    if [ "$farch" = x86_64 ] && can_run_roots; then
        scripts_in_root "$w"
    fi
    rm -rf "$w"
done
# With OpenWrt's opkg (OPKG=path to opkg-lede's opkg-cl, built from openwrt/opkg-lede; no
# registry CI can reach carries it): each .ipk installed into an image root as the image
# builder does (--offline-root, IPKG_INSTROOT, scripts run), upgraded over a changed
# /etc/config/ferry (kept, the new default as ferry-opkg), removed.
opkg=${OPKG:-}
ipks=("$DIR"/*.ipk)
if [ ${#ipks[@]} -gt 0 ] && [ -z "$opkg" ]; then
    echo "test-packages: the .ipk files were not installed with opkg (OPKG=path to opkg-lede's opkg-cl)" >&2
elif [ ${#ipks[@]} -gt 0 ]; then
    for pkg in "${ipks[@]}"; do
        IFS=_ read -r fname fversion farch <<<"$(basename "$pkg" .ipk)"
        w=$(mktemp -d)
        r="$w/root"
        MKROOT_NO_FERRY=1 sh "$ROOT/openwrt/test/mkroot.sh" "$r" "$(command -v busybox)" >/dev/null
        mkdir -p "$r/usr/lib/opkg"
        # An image root has libc, which the package depends on.
        printf 'Package: libc\nVersion: 1\nStatus: install user installed\nArchitecture: %s\n\n' "$farch" \
            >"$r/usr/lib/opkg/status"
        mkdir -p "$r/usr/lib/opkg/info"
        : >"$r/usr/lib/opkg/info/libc.list"
        before=$failures
        printf 'arch all 1\narch %s 10\ndest root /\nlists_dir ext /var/opkg-lists\n' "$farch" >"$w/opkg.conf"
        o() { IPKG_INSTROOT="$r" "$opkg" --offline-root "$r" -f "$w/opkg.conf" --force-postinstall "$@" >>"$w/opkg.log" 2>&1; }
        links() { echo "$(readlink "$r/etc/rc.d/S95ferry"),$(readlink "$r/etc/rc.d/K10ferry")"; }
        check "opkg installs it" o install "$pkg"
        check "opkg installed the files with their modes" test \
            "$(cd "$r" && find etc/config/ferry etc/init.d/ferry etc/hotplug.d/iface/95-ferry usr/bin/ferry -printf '%m %p;')" = \
            "600 etc/config/ferry;755 etc/init.d/ferry;644 etc/hotplug.d/iface/95-ferry;755 usr/bin/ferry;"
        check "postinst, as opkg ran it into an image root, enabled with both links" \
            test "$(links)" = "../init.d/ferry,../init.d/ferry"
        echo "# changed here" >>"$r/etc/config/ferry"
        "$ROOT/packaging/build-ipk.sh" --binary "$r/usr/bin/ferry" --arch "$farch" --name "$fname" \
            --version "${fversion%-r*}-r99" --out "$w/next" >/dev/null
        check "opkg upgrades it" o install "$w/next/${fname}_${fversion%-r*}-r99_$farch.ipk"
        check "the upgrade kept the changed config, the new default as ferry-opkg" test \
            "$(tail -n1 "$r/etc/config/ferry"),$(cmp -s "$r/etc/config/ferry-opkg" "$ROOT/openwrt/ferry/files/ferry.config" && echo new)" = "# changed here,new"
        check "opkg removes it" o remove "$fname"
        check "removal disabled it and took the binary, kept the changed config" \
            test "$(links),$(find "$r/usr/bin/ferry" 2>/dev/null | wc -l),$(tail -n1 "$r/etc/config/ferry")" = ",,0,# changed here"
        [ "$failures" = "$before" ] || cat "$w/opkg.log" >&2
        rm -rf "$w"
    done
fi

# The .apk packages (OpenWrt 25.12), with apk-tools 3 itself: apk add into a root laid out like
# a router's. Every package: its files and modes, the conffile lists, Provides. The x86_64 one
# (its binary runs here) also: the scripts as apk runs them (chrooted) for a new install, an
# upgrade of a service the user disabled and of /etc/config/ferry the user changed (kept; the
# new default beside it as .apk-new), and removal. Without apk-tools 3 (no registry CI can
# reach carries it) the .apk files are not made and these checks say they did not run.
apk=${APK:-$(command -v apk || true)}
if [ -n "$apk" ] && ! "$apk" --version 2>/dev/null | grep -q '^apk-tools 3\.'; then apk=''; fi
apks=("$DIR"/*.apk)
if [ ${#apks[@]} -gt 0 ] && [ -z "$apk" ]; then
    echo "test-packages: ${#apks[@]} .apk packages not checked: apk-tools 3 is not installed (APK=path)" >&2
elif [ ${#apks[@]} -gt 0 ]; then
    for pkg in "${apks[@]}"; do
        packages=$((packages + 1))
        base=$(basename "$pkg" .apk)
        farch=${base#*_}
        fname=${base%%-[0-9]*}
        fversion=${base#"$fname"-}
        fversion=${fversion%%_*}
        w=$(mktemp -d)
        r="$w/root"
        # The root gets the libraries the package's binary loads (none: it is static).
        mkdir -p "$w/x"
        if ! "$apk" extract --destination "$w/x" --allow-untrusted "$pkg" >/dev/null 2>&1; then
            fail "apk extract cannot read it"
            rm -rf "$w"
            continue
        fi
        MKROOT_NO_FERRY=1 sh "$ROOT/openwrt/test/mkroot.sh" "$r" "$w/x/usr/bin/ferry" >/dev/null
        mkdir -p "$r/etc/apk"
        echo "$farch" >"$r/etc/apk/arch"
        runs=''
        [ "$farch" = x86_64 ] && can_run_roots && runs=1
        scripts=()
        [ -n "$runs" ] || scripts=(--no-scripts)
        check "apk add installs it" "$apk" add --root "$r" --initdb --allow-untrusted --no-network \
            "${scripts[@]}" --quiet "$pkg"
        info=$("$apk" info --root "$r" --no-network -a "$fname" 2>/dev/null || true)
        check "apk knows it as $fname $fversion" grep -q "^$fname-$fversion description:" <<<"$info"
        case "$fname" in
        ferry-lite) check "ferry-lite provides ferry" grep -q "^ferry=" <<<"$(sed -n '/provides:/,/^$/p' <<<"$info")" ;;
        esac
        check "the files and modes are the .ipk's, with the conffile lists" test \
            "$(cd "$r" && find etc/config/ferry etc/init.d/ferry etc/hotplug.d/iface/95-ferry lib/upgrade/keep.d/ferry \
                usr/bin/ferry lib/apk/packages/"$fname".conffiles lib/apk/packages/"$fname".conffiles_static \
                -printf '%m %U:%G %p;')" = \
            "600 0:0 etc/config/ferry;755 0:0 etc/init.d/ferry;644 0:0 etc/hotplug.d/iface/95-ferry;644 0:0 lib/upgrade/keep.d/ferry;755 0:0 usr/bin/ferry;644 0:0 lib/apk/packages/$fname.conffiles;644 0:0 lib/apk/packages/$fname.conffiles_static;"
        check "the conffile list names /etc/config/ferry" test "$(cat "$r/lib/apk/packages/$fname.conffiles")" = /etc/config/ferry
        check "the init script is ours" cmp -s "$r/etc/init.d/ferry" "$ROOT/openwrt/ferry/files/ferry.init"
        if [ -n "$runs" ]; then
            log="$r/tmp/ubus.log"
            links() { echo "$(readlink "$r/etc/rc.d/S95ferry"),$(readlink "$r/etc/rc.d/K10ferry")"; }
            calls() { grep '^--- ubus call service' "$log" 2>/dev/null | awk '{print $5}' | tr '\n' ' '; }
            check "post-install enabled the service" test "$(links)" = "../init.d/ferry,../init.d/ferry"
            check "post-install started it" test "$(calls)" = "set "
            echo "# changed here" >>"$r/etc/config/ferry"
            in_root "$r" /etc/init.d/ferry disable || fail "disable failed"
            : >"$log"
            APK="$apk" "$ROOT/packaging/build-apk.sh" --binary "$r/usr/bin/ferry" --arch "$farch" \
                --name "$fname" --version "${fversion%-r*}-r99" --out "$w/next" >/dev/null
            check "apk add upgrades it" "$apk" add --root "$r" --allow-untrusted --no-network --quiet \
                "$w/next/$fname-${fversion%-r*}-r99_$farch.apk"
            check "the upgrade kept the changed config, the new default beside it" \
                test "$(tail -n1 "$r/etc/config/ferry"),$(cmp -s "$r/etc/config/ferry.apk-new" "$ROOT/openwrt/ferry/files/ferry.config" && echo new)" = "# changed here,new"
            check "the upgrade left the service disabled" test "$(links)" = ","
            check "the upgrade stopped and started it" test "$(calls)" = "delete set "
            in_root "$r" /etc/init.d/ferry enable || fail "enable failed"
            : >"$log"
            check "apk del removes it" "$apk" del --root "$r" --no-network --quiet "$fname"
            check "removal stopped and disabled it" test "$(calls),$(links)" = "delete ,,"
            check "removal took the binary and scripts, kept the changed config" \
                test "$(find "$r/usr/bin/ferry" "$r/etc/init.d/ferry" "$r/etc/hotplug.d/iface/95-ferry" 2>/dev/null | wc -l),$(tail -n1 "$r/etc/config/ferry")" = "0,# changed here"
            roots_checked=$((roots_checked + 1))
        fi
        rm -rf "$w"
    done
fi

if [ "$packages" = 0 ]; then
    echo "test-packages: no package in $DIR (run scripts/cross-build.sh first)" >&2
    exit 1
fi
if [ "$roots_checked" = 0 ]; then
    echo "test-packages: the maintainer scripts were not run in a root (that needs root and an x86_64 package)" >&2
fi
echo "test-packages: $packages packages, $checks checks, $failures failed; scripts run in a root for $roots_checked"
[ "$failures" = 0 ]
