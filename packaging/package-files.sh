# shellcheck shell=sh
# What the .ipk and .apk packages hold, shared by build-ipk.sh and build-apk.sh.
# Sourced with $root set to the repository.

# stage_files <dir> <binary>: the installed tree.
stage_files() {
	mkdir -p "$1/usr/bin" "$1/etc/init.d" "$1/etc/config"
	install -m 0755 "$2" "$1/usr/bin/ferry"
	install -m 0755 "${root:?}/openwrt/ferry/files/ferry.init" "$1/etc/init.d/ferry"
	install -m 0600 "${root:?}/openwrt/ferry/files/ferry.config" "$1/etc/config/ferry"
	mkdir -p "$1/lib/upgrade/keep.d"
	install -m 0644 "${root:?}/openwrt/ferry/files/ferry.keep" "$1/lib/upgrade/keep.d/ferry"
}

package_description() {
	case "$1" in
	ferry-lite) echo "Ferry messaging node, lite build (mesh links over plain QUIC, no mDNS) for 8 MB-flash routers." ;;
	*) echo "Ferry: offline-first end-to-end-encrypted messaging node for community mesh networks." ;;
	esac
}

# Enables the service; starts it unless the package is being installed into an image root
# (IPKG_INSTROOT set by the image builder), where it starts at first boot.
write_postinst() {
	cat <<'SCRIPT'
#!/bin/sh
if [ -n "${IPKG_INSTROOT:-}" ]; then
	mkdir -p "$IPKG_INSTROOT/etc/rc.d"
	ln -sf ../init.d/ferry "$IPKG_INSTROOT/etc/rc.d/S95ferry"
	exit 0
fi
/etc/init.d/ferry enable
/etc/init.d/ferry start
exit 0
SCRIPT
}

# Stops and disables the service before removal.
write_prerm() {
	cat <<'SCRIPT'
#!/bin/sh
[ -n "${IPKG_INSTROOT:-}" ] && exit 0
/etc/init.d/ferry stop
/etc/init.d/ferry disable
exit 0
SCRIPT
}
