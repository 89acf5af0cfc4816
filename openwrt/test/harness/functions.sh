# shellcheck shell=dash
# shellcheck disable=SC2034,SC3045  # variables read through eval; `export -n` is busybox ash's
# A stand-in for OpenWrt's /lib/functions.sh (with /lib/config/uci.sh and `uci export`): the
# UCI part a procd init script uses, with OpenWrt's semantics, installed at /lib/functions.sh
# of the test root (openwrt/test/mkroot.sh) and run by busybox ash as on a router:
# - config_load reads $UCI_CONFIG_DIR/<package> (default /etc/config); it forgets the lists
#   and the sections of the previous load, but an option the file no longer has keeps its
#   old value (as OpenWrt's does); with IPKG_INSTROOT set it does nothing;
# - the file is read by UCI's rules (quotes, backslashes, values over several lines, `#`
#   comments), each value reaches the shell single-quoted (never run), anonymous sections
#   get a name of their own;
# - options are CONFIG_<section>_<option>; lists also _ITEM<n> and _LENGTH, and config_get
#   on a list gives its items separated by spaces; an empty option takes the default.
# Checked against OpenWrt's own files: see docs/openwrt.md, "The test harness".

N="
"
NO_EXPORT=1
LIST_SEP=" "

append() {
	local var="$1" value="$2" sep="${3:- }"
	eval "export ${NO_EXPORT:+-n} -- \"$var=\${$var:+\${$var}\${value:+\$sep}}\$value\""
}

list_contains() {
	local var="$1" str="$2" val
	eval "val=\" \${$var} \""
	[ "${val%% "$str" *}" != "$val" ]
}

config_cb() { return 0; }
option_cb() { return 0; }
list_cb() { return 0; }

package() { return 0; }

config() {
	local cfgtype="$1" name="$2"
	export ${NO_EXPORT:+-n} CONFIG_NUM_SECTIONS=$((CONFIG_NUM_SECTIONS + 1))
	name="${name:-cfg$CONFIG_NUM_SECTIONS}"
	append CONFIG_SECTIONS "$name"
	export ${NO_EXPORT:+-n} CONFIG_SECTION="$name"
	config_set "$CONFIG_SECTION" TYPE "$cfgtype"
	config_cb "$cfgtype" "$name"
}

option() {
	local varname="$1"
	shift
	config_set "$CONFIG_SECTION" "$varname" "$*"
	option_cb "$varname" "$*"
}

list() {
	local varname="$1" value len
	shift
	value="$*"
	config_get len "$CONFIG_SECTION" "${varname}_LENGTH" 0
	[ "$len" = 0 ] && append CONFIG_LIST_STATE "${CONFIG_SECTION}_${varname}"
	len=$((len + 1))
	config_set "$CONFIG_SECTION" "${varname}_ITEM$len" "$value"
	config_set "$CONFIG_SECTION" "${varname}_LENGTH" "$len"
	append "CONFIG_${CONFIG_SECTION}_${varname}" "$value" "$LIST_SEP"
	list_cb "$varname" "$value"
}

config_set() {
	export ${NO_EXPORT:+-n} "CONFIG_${1}_${2}=${3}"
}

# config_get <variable> <section> <option> [<default>], or config_get <section> <option>
# (prints). Names that are not shell identifiers are ignored, as OpenWrt's does.
config_get() {
	case "$2${3:-$1}" in
	*[!A-Za-z0-9_]*) : ;;
	*)
		case "$3" in
		'') eval echo "\"\${CONFIG_${1}_${2}:-\${4}}\"" ;;
		*) eval export ${NO_EXPORT:+-n} -- "${1}=\${CONFIG_${2}_${3}:-\${4}}" ;;
		esac
		;;
	esac
}

get_bool() {
	case "$1" in
	1 | on | true | yes | enabled) printf 1 ;;
	0 | off | false | no | disabled) printf 0 ;;
	*) printf '%s' "$2" ;;
	esac
}

config_get_bool() {
	local _tmp
	config_get _tmp "$2" "$3" "$4"
	_tmp="$(get_bool "$_tmp" "$4")"
	export ${NO_EXPORT:+-n} "$1=$_tmp"
}

config_foreach() {
	local ___function="$1" ___type section cfgtype
	[ "$#" -ge 1 ] && shift
	___type="$1"
	[ "$#" -ge 1 ] && shift
	[ -z "$CONFIG_SECTIONS" ] && return 0
	for section in ${CONFIG_SECTIONS}; do
		config_get cfgtype "$section" TYPE
		[ -n "$___type" ] && [ "x$cfgtype" != "x$___type" ] && continue
		eval "$___function \"\$section\" \"\$@\""
	done
}

config_list_foreach() {
	[ "$#" -ge 3 ] || return 0
	local section="$1" option="$2" function="$3" val len c=1
	shift 3
	config_get len "$section" "${option}_LENGTH"
	[ -z "$len" ] && return 0
	while [ "$c" -le "$len" ]; do
		config_get val "$section" "${option}_ITEM$c"
		eval "$function \"\$val\" \"\$@\""
		c=$((c + 1))
	done
}

# Prints a UCI file as `uci -n export` would reach the shell: one `package`, `config`,
# `option` or `list` command per statement, every word single-quoted. UCI's rules: words are
# separated by blanks; 'single quotes' take everything literally, "double quotes" and bare
# words take a backslash as "the next character as it is"; a quote may run over several
# lines; # starts a comment where a word could start. An error names the line.
_uci_export() {
	awk '
	function q(s) { gsub(/\047/, "\047\\\047\047", s); return "\047" s "\047" }
	function flush() {
		if (nw == 0) return
		kw = w[1]
		if (kw == "config" && nw == 2) { anon++; w[3] = sprintf("cfg%02x%04x", anon, anon * 4099 % 65536); nw = 3 }
		if ((kw == "config" && nw == 3) || ((kw == "option" || kw == "list") && nw == 3) || (kw == "package" && nw == 2)) {
			out = kw; for (i = 2; i <= nw; i++) out = out " " q(w[i]); print out
		} else {
			printf "uci: parse error at line %d: %s\n", start, kw > "/dev/stderr"; bad = 1
		}
		nw = 0
	}
	BEGIN { RS = "\001"; anon = 0 }
	{
		s = $0; n = length(s); line = 1; nw = 0; inword = 0; quote = ""
		for (p = 1; p <= n; p++) {
			c = substr(s, p, 1)
			if (quote == "\047") { if (c == "\047") quote = ""; else { cur = cur c; if (c == "\n") line++ }; continue }
			if (quote == "\"") {
				if (c == "\"") quote = ""
				else if (c == "\\" && p < n) { p++; c = substr(s, p, 1); if (c == "\n") line++; else cur = cur c }
				else { cur = cur c; if (c == "\n") line++ }
				continue
			}
			if (c == "\n" || c == " " || c == "\t" || c == "\r") {
				if (inword) { w[++nw] = cur; cur = ""; inword = 0 }
				if (c == "\n") { flush(); line++ }
				continue
			}
			if (c == "#" && !inword) { while (p <= n && substr(s, p, 1) != "\n") p++; p--; continue }
			if (!inword) { inword = 1; cur = ""; if (nw == 0) start = line }
			if (c == "\047" || c == "\"") { quote = c; continue }
			if (c == "\\" && p < n) { p++; c = substr(s, p, 1); if (c == "\n") { line++; continue } }
			cur = cur c
		}
		if (quote != "") { printf "uci: unterminated quote from line %d\n", start > "/dev/stderr"; bad = 1 }
		if (inword) w[++nw] = cur
		flush()
	}
	END { exit bad }
	' "$1"
}

config_load() {
	local package="$1" file data var
	[ -n "$IPKG_INSTROOT" ] && return 0
	for var in $CONFIG_LIST_STATE; do
		export ${NO_EXPORT:+-n} "CONFIG_${var}="
		export ${NO_EXPORT:+-n} "CONFIG_${var}_LENGTH="
	done
	export ${NO_EXPORT:+-n} CONFIG_LIST_STATE=
	export ${NO_EXPORT:+-n} CONFIG_SECTIONS=
	export ${NO_EXPORT:+-n} CONFIG_NUM_SECTIONS=0
	export ${NO_EXPORT:+-n} CONFIG_SECTION=
	file="${UCI_CONFIG_DIR:-/etc/config}/$package"
	[ -f "$file" ] || return 1
	data="$(_uci_export "$file" 2>/dev/null)" || return 1
	eval "$data"
}
