# shellcheck shell=sh
# Shared by the OpenWrt tests: runs a command inside a root made by mkroot.sh, as root.
#   in_root ROOT COMMAND [ARGS...]
# The host's /tmp is the root's /tmp (a private mount namespace), so work directories under
# /tmp have the same path inside and out. These variables pass in: UCI_CONFIG_DIR,
# FERRY_RUN_DIR, UBUS_LOG, IPKG_INSTROOT, PKG_UPGRADE, IPKG_NO_SCRIPT, ACTION, INTERFACE.
in_root() {
	(in_root_exec "$@")
}

# in_root_exec ROOT COMMAND [ARGS...]: as in_root, but the calling shell becomes the command
# (exec all the way down), so that `(in_root_exec ...) &` leaves the command's own pid in $!.
in_root_exec() {
	_root=$1
	shift
	# shellcheck disable=SC2016  # expanded by the inner shell
	exec unshare -m sh -c '
		root=$1
		shift
		mount --bind /tmp "$root/tmp" || exit 97
		exec chroot "$root" /bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin \
			${UCI_CONFIG_DIR:+UCI_CONFIG_DIR="$UCI_CONFIG_DIR"} \
			${FERRY_RUN_DIR:+FERRY_RUN_DIR="$FERRY_RUN_DIR"} \
			${UBUS_LOG:+UBUS_LOG="$UBUS_LOG"} \
			${IPKG_INSTROOT:+IPKG_INSTROOT="$IPKG_INSTROOT"} \
			${PKG_UPGRADE:+PKG_UPGRADE="$PKG_UPGRADE"} \
			${IPKG_NO_SCRIPT:+IPKG_NO_SCRIPT="$IPKG_NO_SCRIPT"} \
			${ACTION:+ACTION="$ACTION"} \
			${INTERFACE:+INTERFACE="$INTERFACE"} \
			"$@"
	' sh "$_root" "$@"
}

# Whether this machine can run in_root: root, unshare, chroot.
can_run_roots() {
	[ "$(id -u)" = 0 ] && command -v unshare >/dev/null && command -v chroot >/dev/null
}
