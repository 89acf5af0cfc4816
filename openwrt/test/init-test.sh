#!/bin/sh
# Runs openwrt/ferry/files/ferry.init against the stand-ins in harness/ for several UCI
# configs and checks what it registers with procd and the config it renders; the rendered
# config is checked by the real node (`ferry node --check-config`).
#   FERRY_BIN=target/debug/ferry sh openwrt/test/init-test.sh
set -eu
here=$(cd "$(dirname "$0")" && pwd)
init="$here/../ferry/files/ferry.init"
shipped="$here/../ferry/files/ferry.config"
FERRY_BIN=${FERRY_BIN:?set FERRY_BIN to a ferry binary}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
failures=0
checks=0

fail() {
	printf 'FAIL [%s]: %s\n' "$case" "$*" >&2
	failures=$((failures + 1))
}

# expect_line <tab-separated line>: the procd log has exactly this line.
expect_line() {
	checks=$((checks + 1))
	grep -qxF "$1" "$PROCD_LOG" || fail "procd log lacks: $(printf '%s' "$1" | tr '\t' ' ')"
}

# expect_json <jq filter that must be true>: on the node's view of the rendered config.
expect_json() {
	checks=$((checks + 1))
	jq -e "$1" "$work/$case.json" >/dev/null || fail "resolved config: $1 is not true; got $(cat "$work/$case.json")"
}

# run_case <name> <uci file contents> [action]: runs the init script; returns its status.
run_case() {
	case=$1
	mkdir -p "$work/$case/uci" "$work/$case/run"
	printf '%s\n' "$2" >"$work/$case/uci/ferry"
	export UCI_CONFIG_DIR="$work/$case/uci" PROCD_LOG="$work/$case/procd.log"
	export FERRY_RUN_DIR="$work/$case/run"
	: >"$PROCD_LOG"
	sh "$here/harness/rc.common" "$init" "${3:-start}" 2>"$work/$case/stderr"
}

# check_rendered: the node accepts the rendered config; its resolved view is in $case.json.
check_rendered() {
	checks=$((checks + 1))
	if ! "$FERRY_BIN" node --config "$FERRY_RUN_DIR/ferry.toml" --check-config >"$work/$case.json" 2>"$work/$case.err"; then
		fail "the node refused the rendered config: $(cat "$work/$case.err")"
		echo '{}' >"$work/$case.json"
	fi
}

tab=$(printf '\t')
conf_line="param${tab}command${tab}/usr/bin/ferry${tab}node${tab}--config"

# 1. The config as shipped, with the data directory moved into the sandbox.
run_case shipped "$(sed "s|'/etc/ferry'|'$work/shipped/data'|" "$shipped")" || fail "start failed: $(cat "$work/shipped/stderr")"
expect_line "open_service${tab}ferry.init${tab}$init"
expect_line "open_instance"
expect_line "$conf_line$tab$FERRY_RUN_DIR/ferry.toml"
expect_line "param${tab}respawn${tab}3600${tab}5${tab}5"
expect_line "param${tab}stdout${tab}1"
expect_line "param${tab}stderr${tab}1"
expect_line "param${tab}file${tab}/etc/config/ferry${tab}$FERRY_RUN_DIR/ferry.toml"
expect_line "reload_trigger${tab}ferry"
expect_line "interface_trigger${tab}interface.*.up${tab}wan${tab}/usr/bin/ferry${tab}reconnect${tab}--admin-socket${tab}$FERRY_RUN_DIR/ferry.sock"
expect_line "close_service"
checks=$((checks + 1))
[ "$(stat -c %a "$work/shipped/data")" = 700 ] || fail "data directory is not mode 0700"
check_rendered
expect_json ".data_dir == \"$work/shipped/data\""
expect_json '.listen == "[::]:5001" and .mesh.listen == "[::]:5002"'
expect_json ".admin_socket == \"$FERRY_RUN_DIR/ferry.sock\""
expect_json '.role == "edge" and .hubs == [] and .mesh.peers == [] and .mesh.mdns == true'
expect_json '.metrics == null and .rate_limit == 50 and .log == "info"'
expect_json '.udp_receive_buffer_bytes == 2097152'
expect_json '.store.max_total_bytes == 2097152 and .store.max_recipient_messages == 1000'
expect_json '.store.max_recipient_bytes == 524288 and .store.cache_bytes == 2097152'
expect_json '.store.checkpoint_bytes == 262144 and .store.wal == true'
expect_json '.store.reserve_bytes == 524288'
expect_json '.max_connections == 512 and .max_connections_per_address == 64'
expect_json '.mesh.max_custody == 2000 and .mesh.max_peers == 64'

# 2. Ports, peers, hubs, two uplinks, mDNS off, metrics on, a quote in the log filter.
run_case custom "config ferry 'main'
	option data_dir '$work/custom/data dir'
	option client_port '6001'
	option mesh_port '6002'
	option mdns '0'
	option metrics '127.0.0.1:9101'
	option log_level 'info,ferry_mesh=debug'
	option rate_limit '0'
	option udp_receive_buffer_bytes '1048576'
	list peer '10.23.0.1:5002'
	list peer '$(printf 'ab%.0s' $(seq 32))@[fd00::2]:5002'
	list hub 'hub.example.org:7001'
	list uplink_interface 'wan'
	list uplink_interface 'wwan'" || fail "start failed: $(cat "$work/custom/stderr")"
expect_line "interface_trigger${tab}interface.*.up${tab}wan${tab}/usr/bin/ferry${tab}reconnect${tab}--admin-socket${tab}$FERRY_RUN_DIR/ferry.sock"
expect_line "interface_trigger${tab}interface.*.up${tab}wwan${tab}/usr/bin/ferry${tab}reconnect${tab}--admin-socket${tab}$FERRY_RUN_DIR/ferry.sock"
check_rendered
expect_json ".data_dir == \"$work/custom/data dir\""
expect_json '.listen == "[::]:6001" and .mesh.listen == "[::]:6002" and .mesh.mdns == false'
expect_json '.metrics == "127.0.0.1:9101" and .rate_limit == 0 and .log == "info,ferry_mesh=debug"'
expect_json '.mesh.peers == ["10.23.0.1:5002", "'"$(printf 'ab%.0s' $(seq 32))"'@[fd00::2]:5002"]'
expect_json '.hubs == ["hub.example.org:7001"] and .udp_receive_buffer_bytes == 1048576'
expect_json '.store.max_total_bytes > 2097152'

# 3. A value with quotes and backslashes is escaped, not spliced into the TOML.
run_case quoting "config ferry 'main'
	option data_dir '$work/quoting/a\"b\\\\c'
	option log_level 'info\" \\\\n[x]'" || fail "start failed: $(cat "$work/quoting/stderr")"
check_rendered
checks=$((checks + 1))
jq -e --arg d "$work/quoting/a\"b\\\\c" --arg l 'info" \\n[x]' '.data_dir == $d and .log == $l' \
	"$work/quoting.json" >/dev/null || fail "quoted values came out changed: $(cat "$work/quoting.json")"

# 4. Disabled: nothing is started, and the reason is logged.
run_case disabled "config ferry 'main'
	option enabled '0'" || fail "start failed"
checks=$((checks + 1))
grep -q open_instance "$PROCD_LOG" && fail "a disabled service registered an instance"
checks=$((checks + 1))
grep -q "disabled in /etc/config/ferry" "$work/disabled/stderr" || fail "no message for a disabled service"

# 5. A malformed number: the start fails with a message; no instance, no config.
# (rc.common does not pass start_service's status on; what counts is what was registered.)
run_case badport "config ferry 'main'
	option data_dir '$work/badport/data'
	option client_port '50o1'" || true
checks=$((checks + 1))
grep -q "client_port '50o1' is not a number" "$work/badport/stderr" || fail "no message for a malformed port: $(cat "$work/badport/stderr")"
checks=$((checks + 1))
grep -q open_instance "$PROCD_LOG" && fail "an instance was registered despite a bad config"
checks=$((checks + 1))
[ ! -e "$FERRY_RUN_DIR/ferry.toml" ] || fail "a bad config was rendered"

# 6. A typo after a good start: the reload keeps the node running on the previous config.
good="config ferry 'main'
	option data_dir '$work/typo/data'
	option client_port '7001'"
run_case typo "$good" || fail "start failed"
printf '%s\n' "$good" "	option max_total_bytes '2M'" >"$UCI_CONFIG_DIR/ferry"
: >"$PROCD_LOG"
if sh "$here/harness/rc.common" "$init" reload 2>"$work/typo/stderr"; then :; else
	fail "reload with a typo failed instead of keeping the previous config"
fi
checks=$((checks + 1))
grep -q "max_total_bytes '2M' is not a number" "$work/typo/stderr" || fail "no message for the typo"
checks=$((checks + 1))
grep -q "keeping the previous configuration" "$work/typo/stderr" || fail "no message about keeping the previous config"
expect_line "$conf_line$tab$FERRY_RUN_DIR/ferry.toml"
check_rendered
expect_json '.listen == "[::]:7001"'

# 7. Reload re-renders and re-registers, so procd can compare and restart on change.
run_case reload "config ferry 'main'
	option data_dir '$work/reload/data'" reload || fail "reload failed"
expect_line "$conf_line$tab$FERRY_RUN_DIR/ferry.toml"

echo "init-test: $checks checks, $failures failed"
[ "$failures" -eq 0 ]
