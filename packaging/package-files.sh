# shellcheck shell=sh
# What the .ipk and .apk packages hold, shared by build-ipk.sh and build-apk.sh.
# Sourced with $root set to the repository.

# stage_files <dir> <binary>: the installed tree.
stage_files() {
	mkdir -p "$1/usr/bin" "$1/etc/init.d" "$1/etc/config"
	install -m 0755 "$2" "$1/usr/bin/ferry"
	install -m 0755 "${root:?}/openwrt/ferry/files/ferry.init" "$1/etc/init.d/ferry"
	install -m 0600 "${root:?}/openwrt/ferry/files/ferry.config" "$1/etc/config/ferry"
	mkdir -p "$1/lib/upgrade/keep.d" "$1/etc/hotplug.d/iface"
	install -m 0644 "${root:?}/openwrt/ferry/files/ferry.keep" "$1/lib/upgrade/keep.d/ferry"
	install -m 0644 "${root:?}/openwrt/ferry/files/ferry.hotplug" "$1/etc/hotplug.d/iface/95-ferry"
}

# package_relations <name>: the Provides/Conflicts lines, as the feed Makefile's VARIANT,
# PROVIDES and CONFLICTS make them (a conflict one way: openwrt/ferry/Makefile says why).
package_relations() {
	case "$1" in
	ferry-lite) echo "Provides: ferry" ;;
	*) echo "Conflicts: ferry-lite" ;;
	esac
}

package_description() {
	case "$1" in
	ferry-lite) echo "Ferry messaging node, lite build (mesh links over plain QUIC, no mDNS) for 8 MB-flash routers." ;;
	*) echo "Ferry: offline-first end-to-end-encrypted messaging node for community mesh networks." ;;
	esac
}

# The maintainer scripts do what the OpenWrt SDK's generated ones do (default_postinst and
# default_prerm in OpenWrt's /lib/functions.sh): into an image root (IPKG_INSTROOT, the image
# builder) the service is enabled through the image's own rc.common and starts at first
# boot; on a router, a new install enables and starts it; an upgrade (PKG_UPGRADE=1, set by
# opkg and apk) stops and starts it and leaves it enabled or disabled as the user had it.
# IPKG_NO_SCRIPT=1 skips them.
write_postinst() {
	cat <<'SCRIPT'
#!/bin/sh
[ "${IPKG_NO_SCRIPT:-}" = 1 ] && exit 0
if [ -n "${IPKG_INSTROOT:-}" ]; then
	${shell:-/bin/sh} "$IPKG_INSTROOT/etc/rc.common" "$IPKG_INSTROOT/etc/init.d/ferry" enable
	exit 0
fi
[ "${PKG_UPGRADE:-0}" = 1 ] || /etc/init.d/ferry enable
/etc/init.d/ferry start
exit 0
SCRIPT
}

# Stops the service before removal or upgrade; disables it only when it is removed.
write_prerm() {
	cat <<'SCRIPT'
#!/bin/sh
[ "${IPKG_NO_SCRIPT:-}" = 1 ] && exit 0
if [ -n "${IPKG_INSTROOT:-}" ]; then
	${shell:-/bin/sh} "$IPKG_INSTROOT/etc/rc.common" "$IPKG_INSTROOT/etc/init.d/ferry" disable
	exit 0
fi
/etc/init.d/ferry stop
[ "${PKG_UPGRADE:-0}" = 1 ] || /etc/init.d/ferry disable
exit 0
SCRIPT
}
