#!/bin/sh
# Builds a root directory laid out like an OpenWrt router's, for running Ferry's init script,
# hotplug script and package scripts as a router would (in a chroot, with busybox ash):
#   sh openwrt/test/mkroot.sh ROOT FERRY_BIN
# It holds busybox (static: Debian's busybox-static) as /bin/sh and its applets; the
# stand-ins in openwrt/test/harness/ at OpenWrt's paths (/etc/rc.common, /lib/functions.sh,
# /lib/functions/procd.sh, /sbin/hotplug-call), or, with OPENWRT_FILES=DIR, OpenWrt's own
# files from DIR instead (a tree with etc/rc.common, lib/functions.sh,
# lib/functions/procd.sh, lib/functions/service.sh, lib/config/uci.sh,
# usr/share/libubox/jshn.sh, sbin/uci and usr/bin/jshn, and the libraries they need under
# lib/ and lib64/: see docs/openwrt.md, "The test harness"); /bin/ubus, which records what
# would go to procd (harness/ubus); the ferry binary as /usr/bin/ferry with the shared
# libraries it needs; the init script, its UCI file and the hotplug script from the package.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
files="$here/../ferry/files"
ROOT=${1:?usage: mkroot.sh ROOT FERRY_BIN}
FERRY_BIN=${2:?usage: mkroot.sh ROOT FERRY_BIN}

# copy_with_libs <binary> <path in ROOT>: the binary and the shared libraries it loads.
copy_with_libs() {
	install -D -m 0755 "$1" "$ROOT$2"
	ldd "$1" 2>/dev/null | awk '/=>/ { print $3 } /^\t\/[^ ]*ld-linux/ { print $1 }' |
		while read -r lib; do
			[ -f "$lib" ] || continue
			mkdir -p "$ROOT$(dirname "$lib")"
			cp -L "$lib" "$ROOT$lib"
		done
}

mkdir -p "$ROOT"
for d in bin sbin usr/bin usr/sbin lib/functions lib/config etc/init.d etc/rc.d etc/config \
	etc/hotplug.d/iface lib/upgrade/keep.d var/run var/lock var/state tmp dev; do
	mkdir -p "$ROOT/$d"
done
chmod 1777 "$ROOT/tmp"

busybox=$(command -v busybox) || {
	echo "mkroot: busybox is needed (Debian: apt-get install busybox-static)" >&2
	exit 2
}
if ldd "$busybox" >/dev/null 2>&1; then
	echo "mkroot: $busybox is not static (Debian: apt-get install busybox-static)" >&2
	exit 2
fi
cp "$busybox" "$ROOT/bin/busybox"
for applet in $("$busybox" --list); do
	[ -e "$ROOT/bin/$applet" ] || ln -s busybox "$ROOT/bin/$applet"
done

if [ -n "${OPENWRT_FILES:-}" ]; then
	for f in etc/rc.common lib/functions.sh lib/functions/procd.sh lib/functions/service.sh \
		lib/config/uci.sh usr/share/libubox/jshn.sh sbin/uci usr/bin/jshn; do
		[ -e "$OPENWRT_FILES/$f" ] || { echo "mkroot: $OPENWRT_FILES/$f is missing" >&2; exit 2; }
		install -D "$OPENWRT_FILES/$f" "$ROOT/$f"
	done
	cp -a "$OPENWRT_FILES/lib/." "$ROOT/lib/"
	[ -d "$OPENWRT_FILES/lib64" ] && cp -a "$OPENWRT_FILES/lib64" "$ROOT/"
	chmod 0755 "$ROOT/sbin/uci" "$ROOT/usr/bin/jshn"
	# OpenWrt's procd.sh takes a lock with flock, which Debian's busybox lacks.
	[ -x "$ROOT/bin/flock" ] || copy_with_libs "$(command -v flock)" /usr/bin/flock
else
	install -m 0755 "$here/harness/rc.common" "$ROOT/etc/rc.common"
	install -m 0644 "$here/harness/functions.sh" "$ROOT/lib/functions.sh"
	install -m 0644 "$here/harness/procd.sh" "$ROOT/lib/functions/procd.sh"
	install -m 0755 "$here/harness/hotplug-call" "$ROOT/sbin/hotplug-call"
fi
[ -x "$ROOT/sbin/hotplug-call" ] || install -m 0755 "$here/harness/hotplug-call" "$ROOT/sbin/hotplug-call"
install -m 0755 "$here/harness/ubus" "$ROOT/bin/ubus"

# MKROOT_NO_FERRY=1: a root for a package manager to install ferry into (FERRY_BIN only
# names the architecture's libraries to copy).
if [ -n "${MKROOT_NO_FERRY:-}" ]; then
	copy_with_libs "$FERRY_BIN" /tmp/ferry-libs && rm -f "$ROOT/tmp/ferry-libs"
	exit 0
fi
copy_with_libs "$FERRY_BIN" /usr/bin/ferry
install -m 0755 "$files/ferry.init" "$ROOT/etc/init.d/ferry"
install -m 0600 "$files/ferry.config" "$ROOT/etc/config/ferry"
install -m 0644 "$files/ferry.hotplug" "$ROOT/etc/hotplug.d/iface/95-ferry"
install -m 0644 "$files/ferry.keep" "$ROOT/lib/upgrade/keep.d/ferry"
