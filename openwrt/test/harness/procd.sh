# shellcheck shell=dash
# A stand-in for OpenWrt's /lib/functions/procd.sh: instead of sending the service
# description to procd over ubus, it writes one line per call to $PROCD_LOG, arguments
# separated by tabs, so a test can check what the init script registered.

_procd_log() {
	local IFS='	'
	printf '%s\n' "$*" >>"${PROCD_LOG:?}"
}

procd_open_service() { _procd_log open_service "$@"; }
procd_close_service() {
	if command -v service_triggers >/dev/null 2>&1; then
		service_triggers
	fi
	_procd_log close_service
}
procd_open_instance() { _procd_log open_instance "$@"; }
procd_close_instance() { _procd_log close_instance; }
procd_set_param() { _procd_log param "$@"; }
procd_append_param() { _procd_log append_param "$@"; }
procd_add_reload_trigger() { _procd_log reload_trigger "$@"; }
procd_add_interface_trigger() { _procd_log interface_trigger "$@"; }
procd_kill() { _procd_log kill "$@"; }
