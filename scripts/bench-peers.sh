#!/usr/bin/env bash
# Ferry against Mosquitto and NATS JetStream on the same workload, in one run.
#
#   scripts/bench-peers.sh                    # 3 rounds, 100,000 messages per run
#   ROUNDS=5 MESSAGES=200000 scripts/bench-peers.sh
#
# Installs mosquitto and nats-server from Debian (and matplotlib from PyPI for the plot),
# builds `ferry` with the router packages' features (for this machine) and `ferry-bench`, and
# runs the systems interleaved, round after round (Ferry with one Enqueue per message, Ferry
# with the client library's Batcher (EnqueueMany), Mosquitto with the default
# max_queued_messages, Mosquitto unbounded, NATS JetStream; then again), each server fresh on
# loopback with its data on disk:
#   one-to-one   1 producer -> 1 consumer, MESSAGES x 256 B, 64 in flight
#   fan-in       50 producers -> 1 consumer, MESSAGES x 256 B, 64 in flight each
#   idle         1,000 connected clients: the server's RSS
#   crash        1,000 acknowledged messages for a consumer that is not reading, kill -9,
#                restart: how many does the consumer still get?
# and, for one-to-one and fan-in, the bytes the server wrote to disk per message (its
# write_bytes in /proc/<pid>/io over the run: what a router's flash pays).
# Then prints one table (medians, ranges, Ferry's ratio to each peer), writes it with the
# date and the exact configurations into docs/benchmarks.md, and plots docs/bench-peers.png.
# Uses only 127.0.0.1. Not part of CI (it takes minutes).
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
ROUNDS=${ROUNDS:-3}
MESSAGES=${MESSAGES:-100000}
IDLE_CLIENTS=${IDLE_CLIENTS:-1000}
CRASH_MESSAGES=${CRASH_MESSAGES:-1000}
FERRY_PORT=15001
MQTT_PORT=11883
NATS_PORT=14222

missing=()
command -v mosquitto >/dev/null || [ -x /usr/sbin/mosquitto ] || missing+=(mosquitto)
command -v nats-server >/dev/null || missing+=(nats-server)
command -v jq >/dev/null || missing+=(jq)
if [ ${#missing[@]} -gt 0 ]; then
    echo "bench-peers: installing ${missing[*]}"
    DEBIAN_FRONTEND=noninteractive apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi
# Debian starts a system-wide mosquitto on 1883; ours listens on its own port and does not
# touch it.
MOSQUITTO=$(command -v mosquitto || echo /usr/sbin/mosquitto)
python3 -c 'import matplotlib' 2>/dev/null || python3 -m pip install --quiet matplotlib

# The node as operators install it: the router packages' features (no end-user commands, no
# load generator, debug/trace logging compiled out), built for this machine with the release
# profile; in a target directory of its own, so target/release keeps the developer build.
cargo build --release --locked --bin ferry -p ferry-node --no-default-features \
    --features router,iroh,mdns --target-dir "$ROOT/target/bench-node"
cargo build --release --locked -p ferry-bench
FERRY=$ROOT/target/bench-node/release/ferry
# Where cargo puts builds: CARGO_TARGET_DIR when set (relative to the checkout), else target/.
TARGET_DIR=${CARGO_TARGET_DIR:-target}
case $TARGET_DIR in /*) ;; *) TARGET_DIR=$ROOT/$TARGET_DIR ;; esac
BENCH=$TARGET_DIR/release/ferry-bench

# Data on disk, never tmpfs: durability is what is being compared.
WORK=$(mktemp -d /var/tmp/ferry-bench-peers.XXXXXX)
RESULTS=$WORK/results.jsonl
SERVER_PID=
cleanup() {
    if [ -n "$SERVER_PID" ]; then kill -9 "$SERVER_PID" 2>/dev/null || true; fi
    wait 2>/dev/null || true
    rm -rf "$WORK"
}
trap cleanup EXIT
echo "bench-peers: work directory $WORK ($(df -T "$WORK" | awk 'NR==2 {print $2}'))"

wait_port() { # wait_port <tcp|udp> <port>
    for _ in $(seq 1 100); do
        if [ "$1" = tcp ] && ss -ltnH "sport = :$2" | grep -q .; then return 0; fi
        if [ "$1" = udp ] && ss -lunH "sport = :$2" | grep -q .; then return 0; fi
        sleep 0.1
    done
    echo "bench-peers: nothing listening on $1 $2" >&2
    return 1
}

# start_<system> <data dir>: starts the server in the background, sets SERVER_PID.
start_ferry() {
    # The load comes from one address: lift the per-address limits meant for hostile clients.
    printf 'connection_rate = 0\nmax_connections_per_address = 4096\n' >"$1.toml"
    "$FERRY" node --config "$1.toml" --data-dir "$1" --listen "127.0.0.1:$FERRY_PORT" --rate-limit 0 \
        --no-mesh --log warn 2>>"$WORK/ferry.log" &
    SERVER_PID=$!
    wait_port udp "$FERRY_PORT"
}
start_ferry_batched() { start_ferry "$@"; }
mosquitto_conf() { # mosquitto_conf <data dir> <max_queued_messages>
    mkdir -p "$1"
    chown mosquitto: "$1" 2>/dev/null || true
    cat >"$1.conf" <<EOF
listener $MQTT_PORT 127.0.0.1
allow_anonymous true
persistence true
persistence_location $1/
max_queued_messages $2
log_dest stderr
log_type error
EOF
}
start_mosquitto_default() {
    mosquitto_conf "$1" 1000
    "$MOSQUITTO" -c "$1.conf" 2>>"$WORK/mosquitto.log" &
    SERVER_PID=$!
    wait_port tcp "$MQTT_PORT"
}
start_mosquitto_unbounded() {
    mosquitto_conf "$1" 0
    "$MOSQUITTO" -c "$1.conf" 2>>"$WORK/mosquitto.log" &
    SERVER_PID=$!
    wait_port tcp "$MQTT_PORT"
}
start_nats() {
    mkdir -p "$1"
    cat >"$1.conf" <<EOF
listen: 127.0.0.1:$NATS_PORT
jetstream {
    store_dir: "$1"
}
EOF
    nats-server -c "$1.conf" 2>>"$WORK/nats.log" &
    SERVER_PID=$!
    wait_port tcp "$NATS_PORT"
}
stop_server() {
    kill -TERM "$SERVER_PID" 2>/dev/null || true
    wait "$SERVER_PID" 2>/dev/null || true
    SERVER_PID=
}
kill9_server() {
    kill -9 "$SERVER_PID" 2>/dev/null || true
    wait "$SERVER_PID" 2>/dev/null || true
    SERVER_PID=
}

# system name -> bench driver and address
driver() { case "$1" in ferry*) echo ferry ;; mosquitto*) echo mqtt ;; nats) echo nats ;; esac; }
addr() { case "$1" in ferry*) echo "127.0.0.1:$FERRY_PORT" ;; mosquitto*) echo "127.0.0.1:$MQTT_PORT" ;; nats) echo "127.0.0.1:$NATS_PORT" ;; esac; }
label() {
    case "$1" in
    ferry) echo ferry ;;
    ferry_batched) echo "ferry (EnqueueMany)" ;;
    mosquitto_default) echo "mosquitto (max_queued 1000)" ;;
    mosquitto_unbounded) echo "mosquitto (max_queued 0)" ;;
    nats) echo "nats-jetstream" ;;
    esac
}

# bench <system> <round> <ferry-bench args...>: one measurement against the server running
# on $data (its state directory pins that server's certificate for Ferry).
bench() {
    local sys=$1 round=$2
    shift 2
    local extra=()
    if [ "$sys" = ferry_batched ]; then extra=(--batch); fi
    "$BENCH" "$@" "${extra[@]}" --system "$(driver "$sys")" --addr "$(addr "$sys")" \
        --server-pid "$SERVER_PID" --label "$(label "$sys")" --state-dir "$data.state" |
        jq -c --argjson round "$round" '. + {round: $round}' | tee -a "$RESULTS"
}

SYSTEMS=(ferry ferry_batched mosquitto_default mosquitto_unbounded nats)
for round in $(seq 1 "$ROUNDS"); do
    for sys in "${SYSTEMS[@]}"; do
        echo "--- round $round: $(label "$sys")"
        data=$WORK/data-$sys-$round
        "start_$sys" "$data"
        sleep 1
        bench "$sys" "$round" idle --clients "$IDLE_CLIENTS"
        bench "$sys" "$round" run --messages "$MESSAGES" --producers 1
        bench "$sys" "$round" run --messages "$MESSAGES" --producers 50
        stop_server
        rm -rf "$data" "$data.conf" "$data.state" "$data.toml"

        data=$WORK/crash-$sys-$round
        "start_$sys" "$data"
        bench "$sys" "$round" crash-publish --messages "$CRASH_MESSAGES"
        kill9_server
        "start_$sys" "$data"
        bench "$sys" "$round" crash-drain --messages "$CRASH_MESSAGES"
        stop_server
        rm -rf "$data" "$data.conf" "$data.state" "$data.toml"
    done
done

config=$(
    cat <<EOF
- Ferry $(git describe --always --dirty 2>/dev/null): \`ferry node --listen 127.0.0.1:$FERRY_PORT --rate-limit 0 --no-mesh\` with \`connection_rate = 0\` and \`max_connections_per_address = 4096\` (the load comes from one address), release build with the router packages' features (\`router,iroh,mdns\`), data on $(df -T "$WORK" | awk 'NR==2 {print $2}'); every Enqueue is answered after its fsync'd group commit. \`ferry\` sends one Enqueue (200) per message; \`ferry (EnqueueMany)\` sends through the client library's \`Batcher\` (64 messages per request at most, 4 requests outstanding), which puts the messages waiting on a connection into one EnqueueMany (812) request, answered per message after the same commit. The node's and the load generator's QUIC sockets ask for a 2 MiB UDP receive buffer (\`udp_receive_buffer_bytes\`; this machine's \`net.core.rmem_max\` is $(cat /proc/sys/net/core/rmem_max 2>/dev/null || echo unknown)).
- Mosquitto $("$MOSQUITTO" -h 2>/dev/null | head -n1 | awk '{print $3}') (Debian): \`persistence true\`, default \`autosave_interval\` (1800 s), \`max_queued_messages\` 1000 (default) or 0 (unbounded); QoS 1, consumer with \`clean_session = false\`; rumqttc 0.25.
- NATS $(nats-server --version 2>/dev/null | awk '{print $2}') (Debian): JetStream, file storage (no per-write sync option in 2.9; it syncs every 2 minutes), durable pull consumer with explicit acks (\`max_ack_pending\` 100,000); async-nats 0.51.
- Workload: $MESSAGES messages of 256 B per run, 64 in flight per producer; fan-in 50 producers; idle $IDLE_CLIENTS clients; crash $CRASH_MESSAGES messages; $ROUNDS rounds interleaved; $(nproc) cores, $(uname -r).
EOF
)
# The raw results stay after the run: the report can be rebuilt from them.
mkdir -p "$ROOT/target/bench-peers"
KEPT=$ROOT/target/bench-peers/results-$(date -u +%Y%m%dT%H%MZ).jsonl
cp "$RESULTS" "$KEPT"
echo "bench-peers: results kept in $KEPT"
python3 "$ROOT/scripts/bench-peers-report.py" "$RESULTS" "$ROOT/docs/benchmarks.md" \
    "$ROOT/docs/bench-peers.png" "$config"
