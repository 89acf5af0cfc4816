# shellcheck shell=dash
# shellcheck disable=SC3043,SC2154  # local: busybox ash has it; initscript: rc.common's
# A stand-in for OpenWrt's /lib/functions/procd.sh (and libubox's jshn.sh under it): it
# builds the same service description procd gets and sends it the same way, as
# `ubus call service <set|add|delete> '<json>'`, where the test root's ubus (harness/ubus)
# records it. The JSON is built here without jshn: strings, the parameter types procd.sh
# knows (arrays for command/file/respawn/netdev/watch, booleans for stdout/stderr, integers
# for nice/term_timeout, a parameter of another type is dropped), instances named
# instance1..., the triggers array with its 1000 ms delay, and an empty data object.

PROCD_RELOAD_DELAY=1000

# JSON under construction, and for each open object or array whether the next member needs a
# comma before it ("1") or not ("0"), innermost last.
_J=
_J_COMMA=

_j_escape() {
	printf '%s' "$1" | awk 'BEGIN { RS = "\001"; ORS = "" }
	{
		s = $0
		gsub(/\\/, "\\\\", s); gsub(/"/, "\\\"", s); gsub(/\n/, "\\n", s)
		gsub(/\t/, "\\t", s); gsub(/\r/, "\\r", s)
		print s
	}'
}

# _j_member <key>: starts a member (a key inside an object; nothing inside an array).
_j_member() {
	case "$_J_COMMA" in
	*1) _J="$_J," ;;
	esac
	_J_COMMA="${_J_COMMA%?}1"
	[ -n "$1" ] && _J="$_J\"$(_j_escape "$1")\":"
	return 0
}

_j_open() { # <key> <{ or [>
	_j_member "$1"
	_J="$_J$2"
	_J_COMMA="${_J_COMMA}0"
}

_j_close() { # <} or ]>
	_J="$_J$1"
	_J_COMMA="${_J_COMMA%?}"
}

_j_string() { _j_member "$1" && _J="$_J\"$(_j_escape "$2")\""; }
_j_int() { _j_member "$1" && _J="$_J$(printf '%d' "$2" 2>/dev/null || echo 0)"; }
_j_bool() {
	_j_member "$1"
	case "$2" in
	0 | '') _J="${_J}false" ;;
	*) _J="${_J}true" ;;
	esac
}

_j_strings() { # <key> <items...>: an array of strings
	local key="$1"
	shift
	_j_open "$key" '['
	for _i in "$@"; do _j_string '' "$_i"; done
	_j_close ']'
}

procd_lock() { return 0; }

_procd_ubus_call() {
	ubus call service "$1" "$_J"
	_J=
	_J_COMMA=
}

procd_open_service() {
	_PROCD_SERVICE="$1"
	_PROCD_INSTANCE_SEQ=0
	_J=
	_J_COMMA=
	_j_open '' '{'
	_j_string name "$1"
	[ -n "$2" ] && _j_string script "$2"
	_j_open instances '{'
}

procd_close_service() {
	_j_close '}'
	_j_open triggers '['
	service_triggers
	_j_close ']'
	_j_open data '{'
	service_data
	_j_close '}'
	_j_close '}'
	_procd_ubus_call "${1:-set}"
}

procd_open_instance() {
	_PROCD_INSTANCE_SEQ=$((_PROCD_INSTANCE_SEQ + 1))
	_j_open "${1:-instance$_PROCD_INSTANCE_SEQ}" '{'
}

procd_close_instance() { _j_close '}'; }

procd_set_param() {
	local type="$1"
	shift
	case "$type" in
	command | netdev | file | respawn | watch | watchdog) _j_strings "$type" "$@" ;;
	nice | term_timeout) _j_int "$type" "$1" ;;
	pidfile | user | group | facility | vrf) _j_string "$type" "$1" ;;
	stdout | stderr | no_new_privs) _j_bool "$type" "$1" ;;
	esac
}

procd_add_reload_trigger() {
	local name
	for name in "$@"; do
		_j_open '' '['
		_j_string '' config.change
		_j_open '' '['
		_j_string '' if
		_j_strings '' eq package "$name"
		_j_strings '' run_script "/etc/init.d/$(basename "$initscript")" reload
		_j_close ']'
		_j_int '' "$PROCD_RELOAD_DELAY"
		_j_close ']'
	done
}

procd_add_interface_trigger() { # <event> <interface> <command...>
	local event="$1" iface="$2"
	shift 2
	_j_open '' '['
	_j_string '' "$event"
	_j_open '' '['
	_j_string '' if
	_j_strings '' eq interface "$iface"
	_j_strings '' run_script "$@"
	_j_close ']'
	_j_int '' "$PROCD_RELOAD_DELAY"
	_j_close ']'
}

procd_kill() { # <service> [instance]
	_J=
	_J_COMMA=
	_j_open '' '{'
	_j_string name "$1"
	[ -n "$2" ] && _j_string instance "$2"
	_j_close '}'
	_procd_ubus_call delete
}
