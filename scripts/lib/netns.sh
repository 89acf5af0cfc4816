# Shared by the network-namespace tests (scripts/netns-*.sh); sourced, not run.
#
# The caller sets, before sourcing: ROOT (the checkout), NAME (for messages), P (namespace
# and interface prefix, unique per run), WORK_PREFIX (the work directory is
# /tmp/$WORK_PREFIX.XXXXXX), NODES (namespace names, without the prefix) and TIMEOUT (seconds
# for wait_for); and defines diagnose(), which fail() calls. Sourcing checks for root,
# installs iproute2 and jq when missing, builds the release `ferry` unless FERRY_BIN names one
# (setting FERRY), creates WORK and installs the cleanup trap: every process in PID and
# CLIENT is killed and the namespaces deleted on exit; WORK is kept when the run failed
# (FAILED=1 until the caller sets it to 0) or KEEP=1.
# shellcheck shell=bash disable=SC2154

if [ "$(id -u)" != 0 ]; then
    echo "$NAME: needs root (network namespaces)" >&2
    exit 1
fi
missing=()
command -v ip >/dev/null || missing+=(iproute2)
command -v jq >/dev/null || missing+=(jq)
if [ ${#missing[@]} -gt 0 ]; then
    echo "installing ${missing[*]}"
    DEBIAN_FRONTEND=noninteractive apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi

FERRY=${FERRY_BIN:-}
if [ -z "$FERRY" ]; then
    (cd "$ROOT" && cargo build --release --locked --bin ferry)
    # CARGO_TARGET_DIR when set (relative to the checkout), else target/.
    FERRY=${CARGO_TARGET_DIR:-target}/release/ferry
    case $FERRY in /*) ;; *) FERRY=$ROOT/$FERRY ;; esac
fi

WORK=$(mktemp -d "/tmp/$WORK_PREFIX.XXXXXX")
declare -A PID CLIENT
FAILED=1

now_ms() { date +%s%3N; }
log() { printf '[%6.2fs] %s\n' "$(( $(now_ms) - T_START ))e-3" "$*"; }

cleanup() {
    set +e
    for p in "${CLIENT[@]}" "${PID[@]}"; do kill -9 "$p" 2>/dev/null; done
    wait 2>/dev/null
    for n in "${NODES[@]}"; do ip netns del "$P-$n" 2>/dev/null; done
    if [ "$FAILED" = 1 ] || [ "${KEEP:-}" = 1 ]; then
        echo "work directory and logs kept in $WORK"
    else
        rm -rf "$WORK"
    fi
}
trap cleanup EXIT

fail() {
    echo "FAILED: $*" >&2
    diagnose >&2
    exit 1
}

# wait_for DESCRIPTION COMMAND...: retries COMMAND every 50 ms for $TIMEOUT seconds.
wait_for() {
    local what=$1
    shift
    local end=$(( $(now_ms) + TIMEOUT * 1000 ))
    until "$@"; do
        [ "$(now_ms)" -lt "$end" ] || fail "timed out after ${TIMEOUT}s waiting for $what"
        sleep 0.05
    done
}

in_ns() { local n=$1; shift; ip netns exec "$P-$n" "$@"; }
# in_order TAG FILE...: the messages TAG-1, TAG-2, ... were shown in the order they were sent.
in_order() {
    local tag=$1
    shift
    cat "$@" | jq -se --arg t "$tag-" '[ .[] | select(.text | startswith($t))
        | .text | ltrimstr($t) | tonumber ] as $n | $n == ($n | sort)' >/dev/null
}
admin() { "$FERRY" "$2" --data-dir "$WORK/$1" --json 2>/dev/null; }
node_id() { grep -o 'mesh links listening.*node=[0-9a-f]*' "$WORK/$1.log" 2>/dev/null | tail -1 | sed 's/.*node=//'; }
