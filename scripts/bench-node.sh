#!/usr/bin/env bash
# Benchmark one Ferry node on loopback: durable one-to-one throughput (64 in flight),
# fan-in from 50 senders, both again through the client library's Batcher (EnqueueMany),
# enqueue->ack and end-to-end latency, idle and peak RSS, RSS with 1,000 idle authenticated
# connections, and the fsync-bound ceiling of the disk, all in one run.
#
#   scripts/bench-node.sh                 # 200,000 messages per run
#   MESSAGES=50000 scripts/bench-node.sh  # quicker
#   NODE_BIN=/tmp/ferry-old scripts/bench-node.sh   # measure another node binary (A/B)
#
# Not a test: it prints figures. The node is the operator build (release profile, the router
# packages' features) with the rate limit off; its data directory is on the project's disk, never tmpfs.
set -euo pipefail
cd "$(dirname "$0")/.."

MESSAGES=${MESSAGES:-200000}
FANIN_SENDERS=${FANIN_SENDERS:-50}
FANIN_IN_FLIGHT=${FANIN_IN_FLIGHT:-16}
IDLE_CONNECTIONS=${IDLE_CONNECTIONS:-1000}

command -v curl >/dev/null || { apt-get update -q && apt-get install -y -q curl; }
# The node as operators install it (the router packages' features, built for this machine;
# the same binary scripts/bench-peers.sh measures), and the load generator `ferry bench` from
# the developer build, which has it.
if [ -z "${NODE_BIN:-}" ]; then
  cargo build --release --locked --bin ferry -p ferry-node --no-default-features \
    --features router,iroh,mdns --target-dir target/bench-node
fi
cargo build --release --locked -p ferry-node --bin ferry
NODE=${NODE_BIN:-target/bench-node/release/ferry}
ROOT=$PWD
# Where cargo puts builds: CARGO_TARGET_DIR when set (relative to the checkout), else target/.
TARGET_DIR=${CARGO_TARGET_DIR:-target}
case $TARGET_DIR in /*) ;; *) TARGET_DIR=$ROOT/$TARGET_DIR ;; esac
BIN=$TARGET_DIR/release/ferry
DATA=$(mktemp -d "$PWD/target/bench-node.XXXXXX")
LOG="$DATA.log"
cleanup() {
  if [ -n "${PID:-}" ] && kill -0 "$PID" 2>/dev/null; then kill -TERM "$PID"; wait "$PID" || true; fi
  rm -rf "$DATA" "$LOG" "$DATA.toml"
}
trap cleanup EXIT

# The load comes from one address: lift the per-address limits meant for hostile clients.
cat >"$DATA.toml" <<TOML
connection_rate = 0
max_connections_per_address = 4096
TOML
"$NODE" node --config "$DATA.toml" --data-dir "$DATA" --listen 127.0.0.1:0 --metrics 127.0.0.1:0 --rate-limit 0 --mesh-listen 127.0.0.1:0 --no-mdns --log info 2>"$LOG" &
PID=$!
for _ in $(seq 1 100); do
  grep -q "accepting QUIC connections" "$LOG" 2>/dev/null && break
  sleep 0.1
done
LINE=$(grep "accepting QUIC connections" "$LOG")
ADDR=$(sed -E 's/.* addr=([^ ]+).*/\1/' <<<"$LINE")
FP=$(sed -E 's/.* fingerprint=([^ ]+).*/\1/' <<<"$LINE")
METRICS=$(grep "serving /metrics" "$LOG" | sed -E 's/.* addr=([^ ]+).*/\1/')
sleep 1
metric() { curl -s "http://$METRICS/metrics" | awk -v m="$1" '$1==m {print $2}'; }
wear() {
  # bytes handed to the file system and fsyncs per message stored, since the last call
  local w s c
  w=$(metric store_bytes_written_total); s=$(metric store_fsyncs_total); c=$(metric store_commits_total)
  local n=$1
  awk -v w="$w" -v w0="${W0:-0}" -v s="$s" -v s0="${S0:-0}" -v c="$c" -v c0="${C0:-0}" -v n="$n" 'BEGIN {
    printf "  flash wear:                 %.0f bytes written and %.3f fsyncs per message; %.1f messages per commit\n",
      (w-w0)/n, (s-s0)/n, n/(c-c0) }'
  W0=$w; S0=$s; C0=$c
}

rss() { awk -v f="$1:" '$1==f {print $2}' "/proc/$PID/status"; }
echo "== Ferry node benchmark, $(date -u +%Y-%m-%dT%H:%MZ)"
echo "host: $(nproc) cores, $(uname -r); node binary $(stat -c %s "$NODE") bytes ($(git describe --always --dirty 2>/dev/null || echo unknown))"
echo "data dir on: $(df -T "$DATA" | awk 'NR==2 {print $2}') ($DATA)"
echo "node idle RSS: $(awk -v k="$(rss VmRSS)" 'BEGIN {printf "%.1f MiB", k/1024}')"
echo

# Memory with many clients is measured first, on the fresh node; throughput runs leave the
# allocator holding pages it reuses later, which the "peak" line at the end shows.
echo "== $IDLE_CONNECTIONS idle authenticated connections (fresh node)"
"$BIN" bench --node "$ADDR" --pin "$FP" --node-pid "$PID" --no-throughput \
  --idle-connections "$IDLE_CONNECTIONS"
echo

W0=$(metric store_bytes_written_total); S0=$(metric store_fsyncs_total); C0=$(metric store_commits_total)
echo "== one sender -> one recipient, 64 in flight"
"$BIN" bench --node "$ADDR" --pin "$FP" --node-pid "$PID" --data-dir "$DATA" \
  --messages "$MESSAGES" --senders 1 --in-flight 64
wear "$MESSAGES"
echo
echo "== $FANIN_SENDERS senders -> one recipient, $FANIN_IN_FLIGHT in flight each"
"$BIN" bench --node "$ADDR" --pin "$FP" --node-pid "$PID" --data-dir "$DATA" \
  --messages "$MESSAGES" --senders "$FANIN_SENDERS" --in-flight "$FANIN_IN_FLIGHT"
wear "$MESSAGES"
echo
echo "== one sender -> one recipient, 64 in flight, through the Batcher (EnqueueMany)"
"$BIN" bench --node "$ADDR" --pin "$FP" --node-pid "$PID" \
  --messages "$MESSAGES" --senders 1 --in-flight 64 --batch
wear "$MESSAGES"
echo
echo "== $FANIN_SENDERS senders -> one recipient, $FANIN_IN_FLIGHT in flight each, through the Batcher (EnqueueMany)"
"$BIN" bench --node "$ADDR" --pin "$FP" --node-pid "$PID" \
  --messages "$MESSAGES" --senders "$FANIN_SENDERS" --in-flight "$FANIN_IN_FLIGHT" --batch
wear "$MESSAGES"
echo
echo "== again $IDLE_CONNECTIONS idle authenticated connections (after the throughput runs)"
"$BIN" bench --node "$ADDR" --pin "$FP" --node-pid "$PID" --no-throughput \
  --idle-connections "$IDLE_CONNECTIONS"
echo
echo "node peak RSS (VmHWM): $(awk -v k="$(rss VmHWM)" 'BEGIN {printf "%.1f MiB", k/1024}')"
kill -TERM "$PID"
wait "$PID"
echo "node exited $? after SIGTERM"
PID=
