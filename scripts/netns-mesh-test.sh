#!/usr/bin/env bash
# Five ferry nodes in a line of network namespaces, A - B - C - D - E: each namespace is
# linked by a veth pair only to its neighbours, IP is routed between them, nodes find each
# other by mDNS alone (no static peers). Then:
#
#   1. erin attaches at E; alice at A sends 200 messages: all arrive exactly once.
#   2. the C-D link is cut; alice sends 200 more; C is killed with SIGKILL while it holds
#      them in custody, restarted, and the link restored: all 400 arrived exactly once.
#   3. a larger backlog (BACKLOG, default 5000) waits at C behind the cut link; the link is
#      restored and the drain rate measured.
#   4. erin moves from E to B; mail sent meanwhile follows her, and new mail goes to B.
#
# It prints the discovery time, the first-message latency over four hops, and the backlog
# drain rate. Needs root (namespaces). Uses only addresses inside the namespaces it creates.
#
# Usage: scripts/netns-mesh-test.sh            (builds target/release/ferry first)
#        FERRY_BIN=path/to/ferry scripts/netns-mesh-test.sh
# Env:   BACKLOG=5000   KEEP=1 (keep the work directory and logs)
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
BACKLOG=${BACKLOG:-5000}
TIMEOUT=${TIMEOUT:-60}

P=fy$$                       # namespace and interface prefix, unique per run
WORK_PREFIX=ferry-netns            # the work directory is /tmp/ferry-netns.XXXXXX
NODES=(a b c d e)
NAME=netns-mesh-test
# shellcheck source-path=SCRIPTDIR source=lib/netns.sh
. "$ROOT/scripts/lib/netns.sh"

diagnose() {
    for n in "${NODES[@]}"; do
        echo "---- node $n: peers / routes / store"
        "$FERRY" peers --data-dir "$WORK/$n" 2>&1 | head -20
        "$FERRY" routes --data-dir "$WORK/$n" 2>&1 | head -20
        "$FERRY" store --data-dir "$WORK/$n" 2>&1 | head -10
        echo "---- node $n: log tail"
        tail -n 15 "$WORK/$n.log"
    done
    for f in "$WORK"/erin-*.log; do
        [ -f "$f" ] && { echo "---- $f"; tail -n 10 "$f"; }
    done
}

# Addresses: subnet i (1..4) joins node i-1 (.1) and node i (.2).
addr() {
    case $1 in
        a) echo 10.99.1.1:5001 ;; b) echo 10.99.1.2:5001 ;; c) echo 10.99.2.2:5001 ;;
        d) echo 10.99.3.2:5001 ;; e) echo 10.99.4.2:5001 ;;
    esac
}

T_START=$(now_ms)
log "namespaces $P-{a..e}, work directory $WORK"
for n in "${NODES[@]}"; do
    ip netns add "$P-$n"
    ip -n "$P-$n" link set lo up
    in_ns "$n" sysctl -qw net.ipv4.ip_forward=1
done
for i in 1 2 3 4; do
    l=${NODES[$((i - 1))]}
    r=${NODES[$i]}
    ip link add "$P-$i$l" netns "$P-$l" type veth peer name "$P-$i$r" netns "$P-$r"
    ip -n "$P-$l" addr add "10.99.$i.1/24" dev "$P-$i$l"
    ip -n "$P-$r" addr add "10.99.$i.2/24" dev "$P-$i$r"
    ip -n "$P-$l" link set "$P-$i$l" up
    ip -n "$P-$r" link set "$P-$i$r" up
done
# Static IP routes along the line (node k sits on subnets k and k+1).
for k in 0 1 2 3 4; do
    for j in 1 2 3 4; do
        if [ "$j" -gt $((k + 1)) ]; then
            ip -n "$P-${NODES[$k]}" route add "10.99.$j.0/24" via "10.99.$((k + 1)).2"
        elif [ "$j" -lt "$k" ]; then
            ip -n "$P-${NODES[$k]}" route add "10.99.$j.0/24" via "10.99.$k.1"
        fi
    done
done

# Background processes are started with `ip netns exec` directly (it execs the command), so
# that $! is the node's own pid: kill -9 must hit the node, not a subshell.
start_node() {
    local n=$1
    ip netns exec "$P-$n" "$FERRY" node --data-dir "$WORK/$n" --listen 0.0.0.0:5001 --rate-limit 0 \
        --log info >>"$WORK/$n.log" 2>&1 &
    PID[$n]=$!
}

linked() { admin "$1" peers | jq -e "[.[] | select(.linked)] | length >= $2" >/dev/null; }
routes_at_least() { admin "$1" routes | jq -e "length >= $2" >/dev/null; }

# ---- discovery -------------------------------------------------------------------------
declare -A STARTED
for n in "${NODES[@]}"; do
    STARTED[$n]=$(now_ms)
    start_node "$n"
done
declare -A NEED=([a]=1 [b]=2 [c]=2 [d]=2 [e]=1)
declare -A FIRST_LINK
pending=("${NODES[@]}")
end=$(( $(now_ms) + TIMEOUT * 1000 ))
while [ ${#pending[@]} -gt 0 ]; do
    left=()
    for n in "${pending[@]}"; do
        if [ -S "$WORK/$n/ferry.sock" ] && linked "$n" 1; then
            FIRST_LINK[$n]=$(( $(now_ms) - STARTED[$n] ))
        else
            left+=("$n")
        fi
    done
    pending=("${left[@]+"${left[@]}"}")
    [ "$(now_ms)" -lt "$end" ] || fail "discovery: no link at ${pending[*]}"
    sleep 0.02
done
for n in "${NODES[@]}"; do wait_for "all neighbours of $n" linked "$n" "${NEED[$n]}"; done
wait_for "routes to all five nodes at A" routes_at_least a 5
wait_for "routes to all five nodes at E" routes_at_least e 5
T_LINE=$(( $(now_ms) - STARTED[e] ))
DISC_MAX=0
for n in "${NODES[@]}"; do [ "${FIRST_LINK[$n]}" -gt "$DISC_MAX" ] && DISC_MAX=${FIRST_LINK[$n]}; done
log "discovery: first link after start (ms): a=${FIRST_LINK[a]} b=${FIRST_LINK[b]} c=${FIRST_LINK[c]} d=${FIRST_LINK[d]} e=${FIRST_LINK[e]}; whole line routed after ${T_LINE} ms"

# ---- users -----------------------------------------------------------------------------
"$FERRY" id new --out "$WORK/alice.json" >/dev/null
"$FERRY" id new --out "$WORK/erin.json" >/dev/null
ERIN=$("$FERRY" id show --id "$WORK/erin.json" --json | jq -r .public_key)
ERIN_FP=$("$FERRY" id show --id "$WORK/erin.json" --json | jq -r .fingerprint)

inbox() { # inbox NODE: erin follows her inbox at NODE
    ip netns exec "$P-$1" "$FERRY" inbox --follow --json --node "$(addr "$1")" --id "$WORK/erin.json" \
        --known-nodes "$WORK/known-erin" >>"$WORK/erin-$1.jsonl" 2>>"$WORK/erin-$1.log" &
    CLIENT[erin]=$!
}
send() { # send TAG COUNT [NODE]: alice sends COUNT messages TAG-1.. from NODE (default A)
    local at=${3:-a}
    seq 1 "$2" | sed "s/^/$1-/" | in_ns "$at" "$FERRY" send --node "$(addr "$at")" --id "$WORK/alice.json" \
        --known-nodes "$WORK/known-alice" --to "$ERIN" --json - >>"$WORK/sent.jsonl" \
        2>>"$WORK/alice.log" || fail "sending $1"
}
received() { cat "$WORK"/erin-*.jsonl 2>/dev/null | wc -l; }
at_least_received() { [ "$(received)" -ge "$1" ]; }
erin_home_is() { # erin_home_is AT HOME: node AT knows erin's home is node HOME
    admin "$1" presence | jq -e --arg u "$ERIN_FP" --arg n "$(node_id "$2")" \
        '[.[] | select(.user == $u and .node_id == $n)] | length == 1' >/dev/null
}
custody_at() { admin "$1" store | jq -r .custody_bundles; }
custody_is() { [ "$(custody_at "$1")" = "$2" ]; }

# ---- 1: 200 messages A -> E ------------------------------------------------------------
inbox e
wait_for "erin's presence at A" erin_home_is a e
send first 1
wait_for "the first message" at_least_received 1
FIRST_LAT=$(jq -s '.[0].received_at_ms - .[0].sent_at_ms' "$WORK/erin-e.jsonl")
log "first message over four hops: ${FIRST_LAT} ms (sent -> shown)"
send p1 199
wait_for "200 messages at E" at_least_received 200
log "phase 1: 200 messages delivered to erin at E"

# ---- 2: cut C-D, 200 more, kill -9 C holding custody, restart, heal ----------------------
ip -n "$P-c" link set "$P-3c" down
ip -n "$P-d" link set "$P-3d" down
send p2 200
wait_for "200 bundles in custody at C" custody_is c 200
log "phase 2: C-D cut; C holds 200 bundles in custody; kill -9 C"
kill -9 "${PID[c]}"
wait "${PID[c]}" 2>/dev/null || true
start_node c
ip -n "$P-c" link set "$P-3c" up
ip -n "$P-d" link set "$P-3d" up
T_HEAL=$(now_ms)
wait_for "400 messages at E" at_least_received 400
log "phase 2: C restarted, link restored: 400 delivered, the last $(( $(now_ms) - T_HEAL )) ms after the heal"

# ---- 3: backlog drain --------------------------------------------------------------------
# Alice sends the backlog at C itself: once C finds D gone (6 s of silence) it withdraws its
# routes beyond D, and mail sent at A would then wait at A, where there is no route to E.
ip -n "$P-c" link set "$P-3c" down
ip -n "$P-d" link set "$P-3d" down
T0=$(now_ms)
send p3 "$BACKLOG" c
log "phase 3: sent $BACKLOG messages at C in $(( $(now_ms) - T0 )) ms while C-D is cut"
wait_for "$BACKLOG bundles in custody at C" custody_is c "$BACKLOG"
ip -n "$P-c" link set "$P-3c" up
ip -n "$P-d" link set "$P-3d" up
T_UP=$(now_ms)
T_FIRST=""
end=$(( T_UP + TIMEOUT * 1000 ))
while :; do
    c=$(custody_at c)
    t=$(now_ms)
    if [ -z "$T_FIRST" ] && [ "$c" -lt "$BACKLOG" ]; then T_FIRST=$t; fi
    [ "$c" = 0 ] && break
    [ "$t" -lt "$end" ] || fail "backlog did not drain from C ($c left)"
    sleep 0.01
done
T_DRAINED=$(now_ms)
DRAIN_MS=$(( T_DRAINED - T_FIRST ))
[ "$DRAIN_MS" -gt 0 ] || DRAIN_MS=1
DRAIN_RATE=$(( BACKLOG * 1000 / DRAIN_MS ))
TOTAL=$(( 400 + BACKLOG ))
wait_for "$TOTAL messages at E" at_least_received "$TOTAL"
E2E_MS=$(( $(now_ms) - T_UP ))
log "phase 3: backlog of $BACKLOG left C in $DRAIN_MS ms after the first moved = $DRAIN_RATE bundles/s; erin had all $TOTAL ${E2E_MS} ms after the link came back"

# ---- 4: erin moves from E to B -------------------------------------------------------------
kill "${CLIENT[erin]}"
wait "${CLIENT[erin]}" 2>/dev/null || true
send p4 20
wait_for "20 more in E's mailbox" bash -c "[ \"\$('$FERRY' store --data-dir '$WORK/e' --json | jq .messages)\" = 20 ]"
inbox b
wait_for "erin's presence at B known at A" erin_home_is a b
send p5 20
TOTAL=$(( TOTAL + 40 ))
wait_for "$TOTAL messages (40 at B)" at_least_received "$TOTAL"
log "phase 4: erin moved E -> B; the 20 waiting at E followed her and 20 new arrived at B"

# ---- exactly once ------------------------------------------------------------------------
SENT=$(jq -r .id "$WORK/sent.jsonl" | sort)
GOT=$(cat "$WORK"/erin-*.jsonl | jq -r .id | sort)
DUP_SHOWN=$(cat "$WORK"/erin-*.jsonl | jq -r .id | sort | uniq -d | wc -l)
DUP_SUPPRESSED=$(cat "$WORK"/erin-*.log | grep -c "duplicate delivery suppressed" || true)
[ "$SENT" = "$GOT" ] || fail "sent and received ids differ: $(comm -3 <(echo "$SENT") <(echo "$GOT") | head)"
[ "$DUP_SHOWN" = 0 ] || fail "$DUP_SHOWN messages shown twice"
[ "$DUP_SUPPRESSED" = 0 ] || fail "$DUP_SUPPRESSED duplicate deliveries reached erin's mailbox"
AT_B=$(wc -l <"$WORK/erin-b.jsonl")
[ "$AT_B" = 40 ] || fail "expected 40 messages shown at B, got $AT_B"
# One sender's messages, held in custody (and carried through a kill -9), in the order sent.
for tag in p1 p2 p3; do
    in_order "$tag" "$WORK/erin-e.jsonl" || fail "the $tag messages were not shown in the order sent"
done

FAILED=0
cat <<EOF

netns mesh test: PASS ($(( ($(now_ms) - T_START) / 1000 )) s)
  discovery of an adjacent node:  max ${DISC_MAX} ms after start (target <= 2000 ms); whole line routed in ${T_LINE} ms
  first message over four hops:   ${FIRST_LAT} ms (target <= 100 ms)
  partition + kill -9 + heal:     400/400 delivered exactly once
  backlog drain after the heal:   ${DRAIN_RATE} bundles/s (${BACKLOG} in ${DRAIN_MS} ms; target >= 5000/s)
  user moved E -> B:              40/40 followed her
  total:                          $(echo "$GOT" | wc -l) messages, each shown once, no duplicate deliveries, held mail in the order sent
EOF
