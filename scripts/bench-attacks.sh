#!/usr/bin/env bash
# Hostile clients against a Ferry node, one attack at a time, while a well-behaved client
# measures its round trip (enqueue to itself, fetch, acknowledge; 10 a second): its p50, p99
# and worst case with no attack and during each, its errors, and the node's peak RSS.
#
# The node is built as operators install it (release, the router packages' features) and runs
# on loopback with its default limits and its data on disk. Attackers come from 127.0.0.2 and
# on (the node sees other hosts); the well-behaved client from 127.0.0.1. Prints a markdown
# table (for docs/limits.md) and keeps the raw results in target/bench-attacks/.
#
# Usage: scripts/bench-attacks.sh
# Env:   SECONDS_PER_ATTACK=10  ONLY=batch,long-polls (a subset)
set -euo pipefail
cd "$(dirname "$0")/.."

SECONDS_PER_ATTACK=${SECONDS_PER_ATTACK:-10}
cargo build --release --locked --target-dir target/bench-node -p ferry-node --bin ferry \
    --no-default-features --features router,iroh,mdns
cargo build --release --locked -p ferry-bench
NODE=target/bench-node/release/ferry
ROOT=$PWD
# Where cargo puts builds: CARGO_TARGET_DIR when set (relative to the checkout), else target/.
TARGET_DIR=${CARGO_TARGET_DIR:-target}
case $TARGET_DIR in /*) ;; *) TARGET_DIR=$ROOT/$TARGET_DIR ;; esac
BENCH=$TARGET_DIR/release/ferry-bench
OUT=target/bench-attacks
mkdir -p "$OUT"
DATA=$(mktemp -d "$PWD/target/bench-attacks.XXXXXX")
LOG="$DATA.log"
cleanup() {
    if [ -n "${PID:-}" ] && kill -0 "$PID" 2>/dev/null; then kill -TERM "$PID"; wait "$PID" || true; fi
    rm -rf "$DATA" "$LOG"
}
trap cleanup EXIT

"$NODE" node --data-dir "$DATA" --listen 127.0.0.1:0 --mesh-listen 127.0.0.1:0 --no-mdns \
    --log warn,ferry_node=info 2>"$LOG" &
PID=$!
for _ in $(seq 1 100); do
    grep -q "accepting QUIC connections" "$LOG" 2>/dev/null && break
    sleep 0.1
done
LINE=$(grep "accepting QUIC connections" "$LOG")
ADDR=$(sed -E 's/.* addr=([^ ]+).*/\1/' <<<"$LINE")
FP=$(sed -E 's/.* fingerprint=([^ ]+).*/\1/' <<<"$LINE")
sleep 1

args=(attack --node "$ADDR" --pin "$FP" --pid "$PID" --seconds "$SECONDS_PER_ATTACK")
[ -n "${ONLY:-}" ] && args+=(--only "$ONLY")
"$BENCH" "${args[@]}" | tee "$OUT/results.json" >/dev/null

python3 - "$OUT/results.json" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
idle = r.get("idle_rss_mib")
print(f"node idle RSS: {idle:.1f} MiB" if idle else "")
print()
print("| attack | well-behaved client p50 / p99 / worst ms | its errors | node peak RSS MiB | attacker requests (refused) |")
print("|---|---|---|---|---|")
for p in r["phases"]:
    rss = p["node_rss_peak_mib"]
    print(f"| {p['what']} | {p['victim_p50_ms']:.2f} / {p['victim_p99_ms']:.2f} / {p['victim_max_ms']:.2f} "
          f"| {p['victim_errors']} of {p['victim_rounds'] + p['victim_errors']} "
          f"| {rss:.1f} | {p['attack_requests']} ({p['attack_refused']}) |" if rss is not None else
          f"| {p['what']} | {p['victim_p50_ms']:.2f} / {p['victim_p99_ms']:.2f} / {p['victim_max_ms']:.2f} "
          f"| {p['victim_errors']} | - | {p['attack_requests']} ({p['attack_refused']}) |")
PY
