#!/bin/sh
# Runs openwrt/ferry/files/ferry.init and the hotplug script as a router would: in a root
# made by mkroot.sh (busybox ash; OpenWrt's rc.common, functions.sh and procd.sh, or the
# stand-ins in harness/), as `/etc/init.d/ferry <command>`, for several UCI files. It checks
# what would go to procd (the JSON of `ubus call service set`), the /etc/rc.d links, the
# config the script renders (checked by the real node, `ferry node --check-config`), and,
# with a real node running, which interface events make it redial.
#   FERRY_BIN=target/debug/ferry sh openwrt/test/init-test.sh
#   OPENWRT_FILES=/path/to/openwrt-files FERRY_BIN=... sh openwrt/test/init-test.sh
# (the second with OpenWrt's own files: docs/openwrt.md, "The test harness"). Needs root
# (chroot, a private mount namespace), busybox-static and jq.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
shipped="$here/../ferry/files/ferry.config"
FERRY_BIN=$(realpath "${FERRY_BIN:?set FERRY_BIN to a ferry binary}")
# shellcheck source=openwrt/test/lib.sh
. "$here/lib.sh"
if ! can_run_roots; then
	echo "init-test: SKIPPED (needs root for chroot and a private mount namespace)" >&2
	exit 0
fi
work=$(mktemp -d /tmp/ferry-init-test.XXXXXX) # under /tmp: the root sees the same paths
root="$work/root"
node_pid=''
trap '[ -z "$node_pid" ] || kill "$node_pid" 2>/dev/null; [ -n "${KEEP:-}" ] || rm -rf "$work"' EXIT
sh "$here/mkroot.sh" "$root" "$FERRY_BIN"
failures=0
checks=0

fail() {
	printf 'FAIL [%s]: %s\n' "$case" "$*" >&2
	failures=$((failures + 1))
}
check() { # check <description> <command...>
	what=$1
	shift
	checks=$((checks + 1))
	"$@" || fail "$what"
}

# The JSON of the last `ubus call service <method>` (default set).
sent() { awk -v m="--- ubus call service ${1:-set}" '$0 == m { getline; j = $0 } END { print j }' "$UBUS_LOG"; }
# expect_set <jq filter>: true of what the last start sent procd.
expect_set() {
	checks=$((checks + 1))
	sent | jq -e "$1" >/dev/null 2>&1 || fail "service set: $1 is not true; got $(sent)"
}
# expect_json <jq filter>: true of the node's view of the rendered config.
expect_json() {
	checks=$((checks + 1))
	jq -e "$1" "$work/$case.json" >/dev/null || fail "resolved config: $1 is not true; got $(cat "$work/$case.json")"
}
expect_said() { # expect_said <text>: the script said it (on stderr).
	checks=$((checks + 1))
	grep -qF "$1" "$work/$case/stderr" || fail "not said: $1; said: $(cat "$work/$case/stderr")"
}

rc() { in_root "$root" /etc/init.d/ferry "$@" 2>>"$work/$case/stderr"; }

# run_case <name> <uci file contents> [command]: a fresh UCI file, then the command.
run_case() {
	case=$1
	mkdir -p "$work/$case/uci" "$work/$case/run"
	printf '%s\n' "$2" >"$work/$case/uci/ferry"
	export UCI_CONFIG_DIR="$work/$case/uci" UBUS_LOG="$work/$case/ubus.log"
	export FERRY_RUN_DIR="$work/$case/run"
	: >"$UBUS_LOG"
	: >"$work/$case/stderr"
	rc "${3:-start}"
}

# check_rendered: the node accepts the rendered config; its resolved view is in $case.json.
check_rendered() {
	checks=$((checks + 1))
	if ! "$FERRY_BIN" node --config "$FERRY_RUN_DIR/ferry.toml" --check-config >"$work/$case.json" 2>"$work/$case.err"; then
		fail "the node refused the rendered config: $(cat "$work/$case.err")"
		echo '{}' >"$work/$case.json"
	fi
}

instance() { # the instance procd gets for a start that rendered its config
	printf '{"command":["/usr/bin/ferry","node","--config","%s/ferry.toml"],"respawn":["3600","5","5"],"stdout":true,"stderr":true,"file":["/etc/config/ferry","%s/ferry.toml"],"term_timeout":15}' \
		"$FERRY_RUN_DIR" "$FERRY_RUN_DIR"
}
reload_trigger='["config.change",["if",["eq","package","ferry"],["run_script","/etc/init.d/ferry","reload"]],1000]'

# 1. The config as shipped, with the data directory moved into the sandbox: the whole
#    message procd gets.
run_case shipped "$(sed "s|'/etc/ferry'|'$work/shipped/data'|" "$shipped")" || fail "start failed"
expect_set '.name == "ferry" and .script == "/etc/init.d/ferry" and .data == {}'
expect_set ".instances == {\"instance1\": $(instance)}"
expect_set ".triggers == [$reload_trigger]"
check "data directory is mode 0700" test "$(stat -c %a "$work/shipped/data")" = 700
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

# 2. Peers, hubs, two uplinks, mDNS off, metrics on, a quote in the log filter; loaded twice
#    (start_service, then service_triggers): lists are not doubled.
peer_id=$(printf 'ab%.0s' $(seq 32))
run_case custom "config ferry 'main'
	option data_dir '$work/custom/data dir'
	option client_port '0'
	option mesh_port '0'
	option mdns '0'
	option metrics '127.0.0.1:0'
	option log_level 'info,ferry_mesh=debug'
	option rate_limit '0'
	option udp_receive_buffer_bytes '1048576'
	list peer '10.23.0.1:5002'
	list peer '$peer_id@[fd00::2]:5002'
	list hub 'hub.example.org:7001'
	list uplink_interface 'wan'
	list uplink_interface 'wwan'" || fail "start failed"
expect_set ".instances == {\"instance1\": $(instance)} and .triggers == [$reload_trigger]"
check_rendered
expect_json ".data_dir == \"$work/custom/data dir\""
expect_json '.listen == "[::]:0" and .mesh.listen == "[::]:0" and .mesh.mdns == false'
expect_json '.metrics == "127.0.0.1:0" and .rate_limit == 0 and .log == "info,ferry_mesh=debug"'
expect_json ".mesh.peers == [\"10.23.0.1:5002\", \"$peer_id@[fd00::2]:5002\"]"
expect_json '.hubs == ["hub.example.org:7001"] and .udp_receive_buffer_bytes == 1048576'
expect_json '.store.max_total_bytes > 2097152'

# 2b. With that node running: an uplink coming up makes it redial; an uplink going down or
#     updating, and another interface coming up, do not (netifd's events, through
#     hotplug-call as netifd runs it).
(in_root_exec "$root" /usr/bin/ferry node --config "$FERRY_RUN_DIR/ferry.toml") >"$work/custom/node.log" 2>&1 &
node_pid=$!
i=0
while [ ! -S "$FERRY_RUN_DIR/ferry.sock" ] && [ "$i" -lt 100 ]; do sleep 0.1; i=$((i + 1)); done
check "the node runs from the rendered config" test -S "$FERRY_RUN_DIR/ferry.sock"
redials() { grep -c 'reconnect requested' "$work/custom/node.log" || true; }
for event in ifdown:wan ifupdate:wan ifup:lan ifup-failed:wwan; do
	ACTION=${event%%:*} INTERFACE=${event#*:} in_root "$root" /sbin/hotplug-call iface
done
sleep 0.3
check "down, update and other interfaces do not redial (redialled $(redials) times)" test "$(redials)" = 0
ACTION=ifup INTERFACE=wwan in_root "$root" /sbin/hotplug-call iface
i=0
while [ "$(redials)" = 0 ] && [ "$i" -lt 50 ]; do sleep 0.1; i=$((i + 1)); done
check "an uplink coming up redials" test "$(redials)" = 1
kill "$node_pid" 2>/dev/null || true
wait "$node_pid" 2>/dev/null || true
node_pid=''

# 3. A value with quotes and backslashes is escaped, not spliced into the TOML; one in
#    double quotes with a command substitution is taken as text.
run_case quoting "config ferry 'main'
	option data_dir '$work/quoting/a\"b\\\\c'
	option log_level \"info\\\" \\\\n[x]\$(echo pwned)\"" || fail "start failed"
check_rendered
checks=$((checks + 1))
jq -e --arg d "$work/quoting/a\"b\\\\c" --arg l 'info" \n[x]$(echo pwned)' '.data_dir == $d and .log == $l' \
	"$work/quoting.json" >/dev/null || fail "quoted values came out changed: $(cat "$work/quoting.json")"

# 4. Disabled: procd gets the service with no instance (it stops a running node); said.
run_case disabled "config ferry 'main'
	option enabled '0'" || fail "start failed"
expect_set '.instances == {}'
expect_said "disabled in /etc/config/ferry"

# 5. Not startable on a first start: no instance, no config, a message for each.
n=0
for bad in "option client_port '50o1'|option client_port '50o1' is not a number" \
	"option client_port '70000'|listen = \"[::]:70000\": not an address" \
	"option role 'edgee'|role = \"edgee\": expected \"edge\" or \"hub\"" \
	"option data_dir '$work/shipped.json/x'|is not a directory" \
	"list peer '10.23.0.1'|static peer \"10.23.0.1\": expected host:port" \
	"list hub 'hub.example.org'|\"hub.example.org\""; do
	n=$((n + 1))
	run_case "bad$n" "config ferry 'main'
	option data_dir '$work/bad$n/data'
	${bad%%|*}" || true
	expect_set '.instances == {}'
	expect_said "${bad#*|}"
	expect_said "not started, fix /etc/config/ferry"
	check "no config rendered" test ! -e "$FERRY_RUN_DIR/ferry.toml"
done

# 5b. An address no interface has yet (an interface that comes up after the node's start at
#     boot): said, and the node is started all the same (procd restarts it until it binds).
run_case notyet "config ferry 'main'
	option data_dir '$work/notyet/data'
	option metrics '192.0.2.1:9101'" || fail "start failed"
expect_said 'metrics = "192.0.2.1:9101": no interface has this address now'
expect_set ".instances == {\"instance1\": $(instance)}"

# 6. Typos after a good start (a reload): the node keeps running on the previous config,
#    and the script says why. A line break in a value (`uci set` takes one) is one of them.
good="config ferry 'main'
	option data_dir '$work/typo/data'
	option client_port '7001'"
nl='
'
for typo in "option max_total_bytes '2M'|max_total_bytes '2M' is not a number" \
	"option role 'edgee'|role = \"edgee\"" \
	"list peer '10.23.0.1'|expected host:port" \
	"option log_level 'info${nl}x'|option log_level has a line break" \
	"list hub 'a.example${nl}b:7001'|option hub has a line break"; do
	run_case typo "$good" || fail "start failed"
	printf '%s\n' "$good" "	${typo%%|*}" >"$UCI_CONFIG_DIR/ferry"
	: >"$UBUS_LOG"
	rc reload || fail "reload failed"
	expect_said "${typo#*|}"
	expect_said "keeping the previous configuration"
	expect_set ".instances == {\"instance1\": $(instance)}"
	check_rendered
	expect_json '.listen == "[::]:7001"'
done

# 7. Reload re-renders and re-registers, so procd can compare and restart on change; stop
#    and restart go through procd's delete.
run_case reload "config ferry 'main'
	option data_dir '$work/reload/data'" reload || fail "reload failed"
expect_set ".instances == {\"instance1\": $(instance)}"
rc stop || fail "stop failed"
check "stop deletes the service" test "$(sent delete | jq -c .)" = '{"name":"ferry"}'
: >"$UBUS_LOG"
rc restart || fail "restart failed"
check "restart deletes, then sets" \
	test "$(grep -c '^--- ubus call service' "$UBUS_LOG"),$(sent delete | jq -c .)" = '2,{"name":"ferry"}'
expect_set ".instances == {\"instance1\": $(instance)}"

# 8. A section of ours not named 'main' is said to be ignored.
run_case unnamed "config ferry
	option data_dir '$work/unnamed/data'" || true
expect_said "is ignored: options go in config ferry 'main'"

# 9. enable / enabled / disable: the boot links, as rc.common makes them.
run_case links "config ferry 'main'" enabled && fail "enabled before enable"
rc enable || fail "enable failed"
check "enable links S95ferry and K10ferry" \
	test "$(readlink "$root/etc/rc.d/S95ferry"),$(readlink "$root/etc/rc.d/K10ferry")" = "../init.d/ferry,../init.d/ferry"
check "enabled after enable" rc enabled
rc disable || fail "disable failed"
check "disable removes both" test ! -e "$root/etc/rc.d/S95ferry" -a ! -e "$root/etc/rc.d/K10ferry"
checks=$((checks + 1))
rc enabled && fail "enabled after disable"

with=stand-ins
[ -z "${OPENWRT_FILES:-}" ] || with="OpenWrt's files from $OPENWRT_FILES"
echo "init-test: $checks checks, $failures failed ($with)"
[ "$failures" -eq 0 ]
