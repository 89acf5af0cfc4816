#!/usr/bin/env bash
# Two meshes and a hub in network namespaces. Mesh 1 is a1 - a2, mesh 2 is b1 - b2; there is
# no link and no IP route between the meshes. a2 and b2 have an "uplink" (a veth pair) to the
# hub's namespace, which does not forward IP. The only way between the meshes is the hub's
# federation port (UDP 7001, QUIC with the nodes' keys as mutual TLS certificates).
#
#   1. bob follows his inbox at b1; alice at a1 sends 200 messages: all arrive exactly once.
#   2. mesh 2's uplink goes down; alice sends 200 more, which wait at the hub; the hub is
#      killed with SIGKILL while it holds them, restarted, the uplink restored: all 400
#      arrived exactly once.
#   3. mesh 2's uplink goes down again; alice sends HOLD more (default 200), held at the hub,
#      which drops its link to b2 after the idle timeout; the uplink comes up (and `ferry
#      reconnect` runs on b2, as the OpenWrt WAN trigger does): all delivered once, and the
#      time to the first and the drain rate (as bob sees them) are measured.
#   4. an edge that is not on the hub's allow list dials it and is refused.
#
# It prints the cross-mesh latency (first message, a1 -> a2 -> hub -> b2 -> b1) and the drain
# rate after the uplink returns. Needs root (namespaces). Uses only addresses inside the
# namespaces it creates.
#
# Usage: scripts/netns-federation-test.sh            (builds target/release/ferry first)
#        FERRY_BIN=path/to/ferry scripts/netns-federation-test.sh
# Env:   HOLD=200   KEEP=1 (keep the work directory and logs)
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
HOLD=${HOLD:-200}
TIMEOUT=${TIMEOUT:-60}

P=ff$$                       # namespace and interface prefix, unique per run
WORK_PREFIX=ferry-fed            # the work directory is /tmp/ferry-fed.XXXXXX
NODES=(a1 a2 b1 b2 hub x)
NAME=netns-federation-test
# shellcheck source-path=SCRIPTDIR source=lib/netns.sh
. "$ROOT/scripts/lib/netns.sh"

diagnose() {
    for n in "${NODES[@]}"; do
        [ -d "$WORK/$n" ] || continue
        echo "---- node $n: peers / routes / store"
        "$FERRY" peers --data-dir "$WORK/$n" 2>&1 | head -20
        "$FERRY" routes --data-dir "$WORK/$n" 2>&1 | head -20
        "$FERRY" store --data-dir "$WORK/$n" 2>&1 | head -10
        echo "---- node $n: log tail"
        tail -n 15 "$WORK/$n.log"
    done
    for f in "$WORK"/bob.log "$WORK"/alice.log; do
        [ -f "$f" ] && { echo "---- $f"; tail -n 10 "$f"; }
    done
}

has_id() { [ -n "$(node_id "$1")" ]; }

# veth NAME LEFT RIGHT SUBNET: a link between two namespaces, LEFT .1 and RIGHT .2.
veth() {
    ip link add "$P-$1l" netns "$P-$2" type veth peer name "$P-$1r" netns "$P-$3"
    ip -n "$P-$2" addr add "10.98.$4.1/24" dev "$P-$1l"
    ip -n "$P-$3" addr add "10.98.$4.2/24" dev "$P-$1r"
    ip -n "$P-$2" link set "$P-$1l" up
    ip -n "$P-$3" link set "$P-$1r" up
}
uplink() { # uplink up|down: mesh 2's uplink (b2 - hub)
    ip -n "$P-b2" link set "$P-ubr" "$1"
    ip -n "$P-hub" link set "$P-ubl" "$1"
}

T_START=$(now_ms)
log "namespaces $P-{a1,a2,b1,b2,hub,x}, work directory $WORK"
for n in "${NODES[@]}"; do
    ip netns add "$P-$n"
    ip -n "$P-$n" link set lo up
    in_ns "$n" sysctl -qw net.ipv4.ip_forward=0
done
veth m1 a1 a2 1      # mesh 1:        a1 10.98.1.1   a2 10.98.1.2
veth m2 b1 b2 2      # mesh 2:        b1 10.98.2.1   b2 10.98.2.2
veth ua hub a2 10    # uplink mesh 1: hub 10.98.10.1 a2 10.98.10.2
veth ub hub b2 20    # uplink mesh 2: hub 10.98.20.1 b2 10.98.20.2
veth ux hub x 30     # the stranger:  hub 10.98.30.1 x  10.98.30.2

# Config files. Mesh links between the two nodes of a mesh are static peers (the mesh test
# covers mDNS); edges name the hub by address only and learn its key on first contact.
conf() { # conf NODE EXTRA...: writes $WORK/NODE.toml
    local n=$1
    shift
    {
        printf 'data_dir = "%s"\nlisten = "0.0.0.0:5001"\nrate_limit = 0\nlog = "info"\n' "$WORK/$n"
        printf '%s\n' "$@"
    } >"$WORK/$n.toml"
}
conf a1 '[mesh]' 'listen = "0.0.0.0:5002"' 'mdns = false' 'peers = ["10.98.1.2:5002"]'
conf a2 '[mesh]' 'listen = "0.0.0.0:5002"' 'mdns = false' '[federation]' 'hubs = ["10.98.10.1:7001"]'
conf b1 '[mesh]' 'listen = "0.0.0.0:5002"' 'mdns = false' 'peers = ["10.98.2.2:5002"]'
conf b2 '[mesh]' 'listen = "0.0.0.0:5002"' 'mdns = false' '[federation]' 'hubs = ["10.98.20.1:7001"]'
conf x '[mesh]' 'listen = "0.0.0.0:5002"' 'mdns = false' '[federation]' 'hubs = ["10.98.30.1:7001"]'

start_node() {
    local n=$1
    ip netns exec "$P-$n" "$FERRY" node --config "$WORK/$n.toml" >>"$WORK/$n.log" 2>&1 &
    PID[$n]=$!
}
linked_to() { # linked_to NODE PEER_ID
    admin "$1" peers | jq -e --arg p "$2" '[.[] | select(.linked and .node_id == $p)] | length == 1' >/dev/null
}
custody_at() { admin "$1" store | jq -r .custody_bundles; }
custody_is() { [ "$(custody_at "$1")" = "$2" ]; }

# ---- start: edges first (the hub's allow list names them), then the hub -----------------
for n in a1 a2 b1 b2; do start_node "$n"; done
for n in a1 a2 b1 b2; do wait_for "node $n up" has_id "$n"; done
A2=$(node_id a2)
B2=$(node_id b2)
conf hub 'role = "hub"' '[mesh]' 'listen = "0.0.0.0:5002"' 'mdns = false' \
    '[federation]' 'listen = "0.0.0.0:7001"' "allow = [\"$A2\", \"$B2\"]" 'domain = "hub.test"'
start_node hub
wait_for "hub up" has_id hub
HUB=$(node_id hub)
# The edges tried while the hub was not up yet; the WAN-up trigger would now run this.
for n in a2 b2; do "$FERRY" reconnect --data-dir "$WORK/$n" >/dev/null; done
T_UP=$(now_ms)
wait_for "a2 linked to the hub" linked_to a2 "$HUB"
wait_for "b2 linked to the hub" linked_to b2 "$HUB"
log "edges linked to the hub $(( $(now_ms) - T_UP )) ms after reconnect"

# ---- users -----------------------------------------------------------------------------
"$FERRY" id new --out "$WORK/alice.json" >/dev/null
"$FERRY" id new --out "$WORK/bob.json" >/dev/null
BOB=$("$FERRY" id show --id "$WORK/bob.json" --json | jq -r .public_key)
BOB_FP=$("$FERRY" id show --id "$WORK/bob.json" --json | jq -r .fingerprint)

# `ip netns exec` itself, not the in_ns function: in the background a function runs in a
# subshell, whose pid $! would be, and the cleanup would kill the subshell and leave the client.
ip netns exec "$P-b1" "$FERRY" inbox --follow --json --node 10.98.2.1:5001 --id "$WORK/bob.json" \
    --known-nodes "$WORK/known-bob" >>"$WORK/bob.jsonl" 2>>"$WORK/bob.log" &
CLIENT[bob]=$!
send() { # send TAG COUNT: alice sends COUNT messages TAG-1.. from a1
    seq 1 "$2" | sed "s/^/$1-/" | in_ns a1 "$FERRY" send --node 10.98.1.1:5001 --id "$WORK/alice.json" \
        --known-nodes "$WORK/known-alice" --to "$BOB" --json - >>"$WORK/sent.jsonl" \
        2>>"$WORK/alice.log" || fail "sending $1"
}
received() { wc -l <"$WORK/bob.jsonl" 2>/dev/null || echo 0; }
at_least_received() { [ "$(received)" -ge "$1" ]; }
bob_known_at() {
    admin "$1" presence | jq -e --arg u "$BOB_FP" '[.[] | select(.user == $u)] | length == 1' >/dev/null
}

# ---- 1: 200 messages from mesh 1 to mesh 2 --------------------------------------------
wait_for "bob's presence at a1, through the hub" bob_known_at a1
send first 1
wait_for "the first message" at_least_received 1
CROSS_LAT=$(jq -s '.[0].received_at_ms - .[0].sent_at_ms' "$WORK/bob.jsonl")
log "first message a1 -> a2 -> hub -> b2 -> b1: ${CROSS_LAT} ms (sent -> shown)"
send p1 199
wait_for "200 messages at b1" at_least_received 200
log "phase 1: 200 messages delivered across the hub"

# ---- 2: uplink down, 200 held at the hub, kill -9 the hub, restart, uplink up ------------
uplink down
send p2 200
wait_for "200 bundles in custody at the hub" custody_is hub 200
log "phase 2: mesh 2 offline; the hub holds 200 bundles; kill -9 the hub"
kill -9 "${PID[hub]}"
wait "${PID[hub]}" 2>/dev/null || true
start_node hub
wait_for "the hub back with its custody" custody_is hub 200
uplink up
"$FERRY" reconnect --data-dir "$WORK/b2" >/dev/null
T_HEAL=$(now_ms)
wait_for "400 messages at b1" at_least_received 400
log "phase 2: hub restarted with 200 held, uplink back: 400 delivered, the last $(( $(now_ms) - T_HEAL )) ms after"

# ---- 3: uplink down until the hub lets go of the link; HOLD held at the hub; drain rate ---
uplink down
T0=$(now_ms)
send p3 "$HOLD"
log "phase 3: sent $HOLD messages in $(( $(now_ms) - T0 )) ms while mesh 2 is offline"
wait_for "$HOLD bundles in custody at the hub" custody_is hub "$HOLD"
# A link whose far end went silent is closed after the idle timeout (10 s); until then the
# hub may still count it up. Wait for that, so the hub holds the mail with no route at all.
not_linked_to() { ! linked_to "$1" "$2"; }
wait_for "the hub to drop its link to b2" not_linked_to hub "$B2"
log "phase 3: the hub has no link to mesh 2 and holds $(custody_at hub) bundles"
uplink up
"$FERRY" reconnect --data-dir "$WORK/b2" >/dev/null
T_UP=$(now_ms)
TOTAL=$(( 400 + HOLD ))
wait_for "$TOTAL messages at b1" at_least_received "$TOTAL"
wait_for "the hub's custody to drain" custody_is hub 0
# The drain rate as bob saw it: from the first to the last held message shown at b1.
read -r P3_FIRST P3_LAST < <(jq -rs '[.[] | select(.text | startswith("p3-")) | .received_at_ms] | "\(min) \(max)"' "$WORK/bob.jsonl")
RELINK_MS=$(( P3_FIRST - T_UP ))
DRAIN_MS=$(( P3_LAST - P3_FIRST ))
[ "$DRAIN_MS" -gt 0 ] || DRAIN_MS=1
DRAIN_RATE=$(( HOLD * 1000 / DRAIN_MS ))
log "phase 3: uplink back; the first held message was shown ${RELINK_MS} ms later, all $HOLD within $DRAIN_MS ms = $DRAIN_RATE messages/s"

# ---- 4: an edge not on the allow list ----------------------------------------------------
start_node x
wait_for "the hub refuses x" grep -q "refused a federation link" "$WORK/hub.log"
wait_for "x reports it was not admitted" grep -q "did not admit this node" "$WORK/x.log"
linked_to x "$HUB" && fail "x is linked to the hub"
log "phase 4: x (not on the allow list) refused by the hub"

# ---- exactly once ------------------------------------------------------------------------
SENT=$(jq -r .id "$WORK/sent.jsonl" | sort)
GOT=$(jq -r .id "$WORK/bob.jsonl" | sort)
DUP_SHOWN=$(jq -r .id "$WORK/bob.jsonl" | sort | uniq -d | wc -l)
DUP_SUPPRESSED=$(grep -c "duplicate delivery suppressed" "$WORK/bob.log" || true)
[ "$SENT" = "$GOT" ] || fail "sent and received ids differ: $(comm -3 <(echo "$SENT") <(echo "$GOT") | head)"
# Held at the hub (and through its kill -9), shown in the order sent.
for tag in p1 p2 p3; do
    in_order "$tag" "$WORK/bob.jsonl" || fail "the $tag messages were not shown in the order sent"
done
[ "$DUP_SHOWN" = 0 ] || fail "$DUP_SHOWN messages shown twice"
[ "$DUP_SUPPRESSED" = 0 ] || fail "$DUP_SUPPRESSED duplicate deliveries reached bob's mailbox"

FAILED=0
cat <<EOF

netns federation test: PASS ($(( ($(now_ms) - T_START) / 1000 )) s)
  cross-mesh latency (first message, 4 links):   ${CROSS_LAT} ms
  hub kill -9 holding 200, restart, uplink back:  400/400 delivered exactly once
  uplink down, ${HOLD} held at the hub, up again:   first shown ${RELINK_MS} ms after the uplink came back;
                                                  drained at ${DRAIN_RATE} messages/s (${HOLD} in ${DRAIN_MS} ms)
  edge not on the allow list:                     refused
  total:                                          $(echo "$GOT" | wc -l) messages, each shown once, no duplicate deliveries, held mail in the order sent
EOF
