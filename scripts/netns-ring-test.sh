#!/usr/bin/env bash
# Five ferry nodes in a ring of network namespaces, X - Y - Z - U - W - X, each link a veth
# pair of its own: every node has a redundant path to every other. Nodes find each other by
# static peers only, each dialling the next one clockwise (X dials Y, Y dials Z, ...), so each
# knows its counter-clockwise neighbour only as an incoming link; no mDNS.
#
# alice follows her inbox at X (`ferry inbox --follow`); bob at Y sends her a message every
# 100 ms for the whole run. What is measured is the stall: how long a message waited beyond
# its path's own latency, taken as the time from send (or from the restart, for a node that
# was down) to shown. Then:
#
#   1. the X-Y link dies (its veth goes down: nobody is told); traffic must go Y-Z-U-W-X.
#   2. the X-Y link flaps five times, for 1 to 5 s.
#   3. with X-Y down, Z (on the only path) is killed with SIGKILL and restarted: Y knows Z only
#      as its static peer, and Z knew Y only as an incoming link before the restart.
#   4. X, alice's node, is killed with SIGKILL and restarted; her inbox --follow keeps
#      showing what was sent meanwhile and after.
#
# Every message must be shown exactly once; every stall is printed, and the test fails if any
# is over STALL_LIMIT_MS (default 6000; the target is 3000, checked in the printed figures:
# before this test the same events stalled for 14-25 s, and 5 minutes for a follower).
#
# Usage: scripts/netns-ring-test.sh            (builds target/release/ferry first)
#        FERRY_BIN=path/to/ferry scripts/netns-ring-test.sh
# Env:   STALL_LIMIT_MS=6000  KEEP=1 (keep the work directory and logs)
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
TIMEOUT=${TIMEOUT:-60}
STALL_LIMIT_MS=${STALL_LIMIT_MS:-6000}

P=fr$$                             # namespace and interface prefix, unique per run
WORK_PREFIX=ferry-ring             # the work directory is /tmp/ferry-ring.XXXXXX
NODES=(x y z u w)
NAME=netns-ring-test
# shellcheck source-path=SCRIPTDIR source=lib/netns.sh
. "$ROOT/scripts/lib/netns.sh"

diagnose() {
    for n in "${NODES[@]}"; do
        echo "---- node $n: peers / routes / store"
        "$FERRY" peers --all --data-dir "$WORK/$n" 2>&1 | head -20
        "$FERRY" routes --data-dir "$WORK/$n" 2>&1 | head -20
        "$FERRY" store --data-dir "$WORK/$n" 2>&1 | head -10
        echo "---- node $n: log tail"
        tail -n 20 "$WORK/$n.log"
    done
    for f in "$WORK"/alice.log "$WORK"/bob.log; do
        [ -f "$f" ] && { echo "---- $f"; tail -n 10 "$f"; }
    done
}

# Link i (1..5) joins node i-1 (.1) and node i mod 5 (.2), on 10.98.i.0/24.
idx() { case $1 in x) echo 0 ;; y) echo 1 ;; z) echo 2 ;; u) echo 3 ;; w) echo 4 ;; esac; }
# Where clients reach node N: its address on the link to its clockwise neighbour.
client_addr() { local i; i=$(idx "$1"); echo "10.98.$(( i + 1 )).1:5001"; }

T_START=$(now_ms)
log "namespaces $P-{x,y,z,u,w}, work directory $WORK"
for n in "${NODES[@]}"; do
    ip netns add "$P-$n"
    ip -n "$P-$n" link set lo up
done
for i in 1 2 3 4 5; do
    l=${NODES[$((i - 1))]}
    r=${NODES[$((i % 5))]}
    ip link add "$P-$i$l" netns "$P-$l" type veth peer name "$P-$i$r" netns "$P-$r"
    ip -n "$P-$l" addr add "10.98.$i.1/24" dev "$P-$i$l"
    ip -n "$P-$r" addr add "10.98.$i.2/24" dev "$P-$i$r"
    ip -n "$P-$l" link set "$P-$i$l" up
    ip -n "$P-$r" link set "$P-$i$r" up
done
link_down() { ip -n "$P-x" link set "$P-1x" down; ip -n "$P-y" link set "$P-1y" down; }
link_up() { ip -n "$P-x" link set "$P-1x" up; ip -n "$P-y" link set "$P-1y" up; }

# Node N dials its clockwise neighbour on the link they share (N is .1 there, it is .2).
start_node() {
    local n=$1 i
    i=$(idx "$n")
    ip netns exec "$P-$n" "$FERRY" node --data-dir "$WORK/$n" --listen 0.0.0.0:5001 \
        --mesh-listen 0.0.0.0:5002 --no-mdns --peer "10.98.$(( i + 1 )).2:5002" --rate-limit 0 \
        --log info >>"$WORK/$n.log" 2>&1 &
    PID[$n]=$!
}
linked() { admin "$1" peers | jq -e "[.[] | select(.linked)] | length >= $2" >/dev/null; }
routes_at_least() { admin "$1" routes | jq -e "length >= $2" >/dev/null; }

for n in "${NODES[@]}"; do start_node "$n"; done
for n in "${NODES[@]}"; do wait_for "both neighbours of $n" linked "$n" 2; done
for n in "${NODES[@]}"; do wait_for "routes to all five nodes at $n" routes_at_least "$n" 5; done
log "ring up: every node linked to both neighbours, all routes known"

# ---- users -----------------------------------------------------------------------------
"$FERRY" id new --out "$WORK/alice.json" >/dev/null
"$FERRY" id new --out "$WORK/bob.json" >/dev/null
ALICE=$("$FERRY" id show --id "$WORK/alice.json" --json | jq -r .public_key)
ALICE_FP=$("$FERRY" id show --id "$WORK/alice.json" --json | jq -r .fingerprint)
ip netns exec "$P-x" "$FERRY" inbox --follow --json --node "$(client_addr x)" --id "$WORK/alice.json" \
    --known-nodes "$WORK/known-alice" >>"$WORK/alice.jsonl" 2>>"$WORK/alice.log" &
CLIENT[alice]=$!
alice_known_at_y() {
    admin y presence | jq -e --arg u "$ALICE_FP" '[.[] | select(.user == $u)] | length == 1' >/dev/null
}
wait_for "alice's presence at Y" alice_known_at_y
# bob: a message every 100 ms, all run long, over one connection.
(
    n=0
    while :; do
        n=$((n + 1))
        echo "m-$n"
        sleep 0.1
    done
) | ip netns exec "$P-y" "$FERRY" send --node "$(client_addr y)" --id "$WORK/bob.json" \
    --known-nodes "$WORK/known-bob" --to "$ALICE" --json - >>"$WORK/sent.jsonl" 2>>"$WORK/bob.log" &
CLIENT[bob]=$!
shown() { wc -l <"$WORK/alice.jsonl"; }
shown_at_least() { [ "$(shown)" -ge "$1" ]; }
wait_for "bob's first messages shown to alice" shown_at_least 10
log "alice follows her inbox at X; bob sends from Y every 100 ms"

# stall FROM TO [SINCE]: the longest wait (ms) of messages sent in [FROM, TO]: shown minus
# sent, or minus SINCE for those sent before it (a node that was down until SINCE).
stall() {
    jq -s --argjson from "$1" --argjson to "$2" --argjson since "${3:-0}" '
        [ .[] | select(.sent_at_ms >= $from and .sent_at_ms <= $to)
          | .received_at_ms - ([.sent_at_ms, $since] | max) ] | max // 0' "$WORK/alice.jsonl"
}
declare -A STALL
check() { # check KEY MS DESCRIPTION
    STALL[$1]=$2
    log "$3: longest stall ${2} ms"
}
# settle: waits until everything sent so far was shown, then a little longer.
settle() {
    local sent
    sleep 1
    sent=$(wc -l <"$WORK/sent.jsonl")
    wait_for "the $sent messages sent so far to be shown" shown_at_least "$sent"
}

# ---- 1: the X-Y link dies --------------------------------------------------------------
T=$(now_ms)
link_down
sleep 10
settle
check dies "$(stall "$((T - 1000))" "$((T + 10000))")" "1. X-Y dies (nobody told)"
link_up
wait_for "X-Y relinked" linked x 2
sleep 3

# ---- 2: five short flaps ---------------------------------------------------------------
T=$(now_ms)
for len in 1 2 3 4 5; do
    link_down
    sleep "$len"
    link_up
    sleep 4
done
settle
check flaps "$(stall "$((T - 1000))" "$(now_ms)")" "2. X-Y flaps for 1-5 s"

# ---- 3: kill -9 Z on the only path -------------------------------------------------------
link_down
sleep 8
T=$(now_ms)
kill -9 "${PID[z]}"
wait "${PID[z]}" 2>/dev/null || true
sleep 0.5
start_node z
T_BACK=$(now_ms)
sleep 8
settle
check relay "$(stall "$T" "$((T_BACK + 8000))" "$T_BACK")" "3. Z killed and restarted (X-Y down)"
link_up
wait_for "X-Y relinked" linked x 2
sleep 3

# ---- 4: kill -9 X, alice's node ----------------------------------------------------------
T=$(now_ms)
kill -9 "${PID[x]}"
wait "${PID[x]}" 2>/dev/null || true
sleep 0.5
start_node x
T_BACK=$(now_ms)
sleep 8
settle
check home "$(stall "$T" "$((T_BACK + 8000))" "$T_BACK")" "4. X (alice's node) killed and restarted"

# ---- exactly once ------------------------------------------------------------------------
kill "${CLIENT[bob]}" 2>/dev/null || true
settle
SENT=$(jq -r .id "$WORK/sent.jsonl" | sort)
GOT=$(jq -r .id "$WORK/alice.jsonl" | sort)
DUP_SHOWN=$(jq -r .id "$WORK/alice.jsonl" | sort | uniq -d | wc -l)
[ "$SENT" = "$GOT" ] || fail "sent and shown ids differ: $(comm -3 <(echo "$SENT") <(echo "$GOT") | head)"
[ "$DUP_SHOWN" = 0 ] || fail "$DUP_SHOWN messages shown twice"
for k in "${!STALL[@]}"; do
    [ "${STALL[$k]}" -le "$STALL_LIMIT_MS" ] || fail "$k: stalled ${STALL[$k]} ms (limit $STALL_LIMIT_MS)"
done

FAILED=0
cat <<EOF

netns ring test: PASS ($(( ($(now_ms) - T_START) / 1000 )) s); longest stall where another path exists (target <= 3000 ms):
  1. X-Y dies, nobody told:              ${STALL[dies]} ms
  2. X-Y flaps for 1, 2, 3, 4, 5 s:        ${STALL[flaps]} ms
  3. Z killed -9 and restarted:           ${STALL[relay]} ms after it was back
  4. X (the follower's node) killed -9:   ${STALL[home]} ms after it was back
  $(echo "$GOT" | wc -l) messages from Y to X, each shown once
EOF
