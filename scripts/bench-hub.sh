#!/usr/bin/env bash
# One hub under load (see docs/scaling.md): a real `ferry node` with role = "hub" on loopback,
# and EDGES edges in one ferry-bench process, each a real mesh driver with its own redb store
# and federation endpoint. Every edge sends to the user at home on the next edge, so every
# bundle crosses the hub. Prints one JSON object per run: edges, bundles relayed per second,
# the hub's RSS before the edges, with them idle, and at its peak.
#
# Usage: scripts/bench-hub.sh                 (EDGES="50 200" MESSAGES=20000 by default)
# Env:   EDGES="50 200"  MESSAGES=20000  SIZE=256  IN_FLIGHT=32
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
EDGES=${EDGES:-"50 200"}
MESSAGES=${MESSAGES:-20000}
SIZE=${SIZE:-256}
IN_FLIGHT=${IN_FLIGHT:-32}

cd "$ROOT"
# Where cargo puts builds: CARGO_TARGET_DIR when set (relative to the checkout), else target/.
TARGET_DIR=${CARGO_TARGET_DIR:-target}
case $TARGET_DIR in /*) ;; *) TARGET_DIR=$ROOT/$TARGET_DIR ;; esac
cargo build --release --locked --bin ferry --bin ferry-bench
FERRY=$TARGET_DIR/release/ferry
BENCH=$TARGET_DIR/release/ferry-bench
WORK=$(mktemp -d /tmp/ferry-bench-hub.XXXXXX)
HUB_PID=""
cleanup() {
    [ -n "$HUB_PID" ] && kill "$HUB_PID" 2>/dev/null && wait "$HUB_PID" 2>/dev/null
    rm -rf "$WORK"
}
trap cleanup EXIT

for n in $EDGES; do
    rm -rf "$WORK/hub"
    allow=$("$BENCH" hub-ids --edges "$n" | sed 's/.*/"&"/' | paste -sd, -)
    cat >"$WORK/hub.toml" <<TOML
role = "hub"
data_dir = "$WORK/hub"
listen = "127.0.0.1:15101"
rate_limit = 0
log = "warn"
[mesh]
listen = "127.0.0.1:15102"
mdns = false
[federation]
listen = "127.0.0.1:17001"
allow = [$allow]
TOML
    "$FERRY" node --config "$WORK/hub.toml" 2>"$WORK/hub-$n.log" &
    HUB_PID=$!
    for _ in $(seq 100); do [ -S "$WORK/hub/ferry.sock" ] && break; sleep 0.1; done
    sleep 0.5
    "$BENCH" hub --hub 127.0.0.1:17001 --hub-pid "$HUB_PID" --edges "$n" \
        --messages "$MESSAGES" --size "$SIZE" --in-flight "$IN_FLIGHT"
    kill "$HUB_PID"
    wait "$HUB_PID" 2>/dev/null || true
    HUB_PID=""
done
