# shellcheck shell=dash
# A stand-in for OpenWrt's /lib/functions.sh: config_load, config_get, config_get_bool
# and config_list_foreach over a UCI file in $UCI_CONFIG_DIR, with UCI's semantics
# (options as CONFIG_<section>_<option>; lists also as _ITEM<n> and _LENGTH; config_get on
# a list gives its items separated by spaces; an empty option takes the default).

config_load() {
	local file="${UCI_CONFIG_DIR:?}/$1" line section='' kind key value n
	[ -f "$file" ] || return 1
	while IFS= read -r line || [ -n "$line" ]; do
		case "$line" in
		'' | '#'* | [[:space:]]'#'*) continue ;;
		esac
		# UCI files quote like the shell does.
		eval "set -- $line"
		kind=$1
		case "$kind" in
		config)
			section=${3:-$2}
			continue
			;;
		option | list)
			key=$2
			# shellcheck disable=SC2034  # read through eval below
			value=$3
			;;
		*)
			echo "functions.sh: cannot parse: $line" >&2
			return 1
			;;
		esac
		if [ "$kind" = option ]; then
			eval "CONFIG_${section}_${key}=\$value"
		else
			eval "n=\$((\${CONFIG_${section}_${key}_LENGTH:-0} + 1))"
			eval "CONFIG_${section}_${key}_ITEM${n}=\$value"
			eval "CONFIG_${section}_${key}_LENGTH=\$n"
			eval "CONFIG_${section}_${key}=\"\${CONFIG_${section}_${key}:+\${CONFIG_${section}_${key}} }\$value\""
		fi
	done <"$file"
}

config_get() {
	eval "$1=\${CONFIG_${2}_${3}:-\$4}"
}

config_get_bool() {
	local _tmp
	config_get _tmp "$2" "$3" "$4"
	case "$_tmp" in
	1 | on | true | yes | enabled) _tmp=1 ;;
	0 | off | false | no | disabled) _tmp=0 ;;
	*) _tmp="$4" ;;
	esac
	eval "$1=\$_tmp"
}

config_list_foreach() {
	local section=$1 option=$2 function=$3 len i item
	shift 3
	eval "len=\${CONFIG_${section}_${option}_LENGTH:-0}"
	i=1
	while [ "$i" -le "$len" ]; do
		eval "item=\$CONFIG_${section}_${option}_ITEM${i}"
		"$function" "$item" "$@"
		i=$((i + 1))
	done
}
