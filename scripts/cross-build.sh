#!/usr/bin/env bash
# Static release builds of `ferry` for routers, their packages, a size report with the
# budget, and a short real run of each binary under qemu-user. No Docker needed.
#
#   scripts/cross-build.sh                  # aarch64, armv7, x86_64, mipsel + lite for aarch64, mipsel
#   TARGETS="aarch64" LITE_TARGETS="" scripts/cross-build.sh
#   CHECK_TARGETS="armv7 x86_64" ...         # `cargo check` these instead of building them
#   NO_QEMU=1 ...                            # skip the qemu runs
#
# Every build rebuilds std with the router profile (-Zbuild-std on stable through
# RUSTC_BOOTSTRAP=1): no unwind tables, panics abort at once, std optimised for size. Links
# with cargo-zigbuild (zig from PyPI, pinned: see ZIG_VERSION). Output in target/dist/:
# binaries, .ipk packages, size-report.txt. Fails if the aarch64 router package or binary is
# over budget, or if the x86_64 router node (run natively) idles with more anonymous memory
# than its budget.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
TARGETS=${TARGETS-"aarch64 armv7 x86_64 mipsel"}
LITE_TARGETS=${LITE_TARGETS-"aarch64 mipsel"}
CHECK_TARGETS=${CHECK_TARGETS:-}
DIST=$ROOT/target/dist
CROSS_DIR=$ROOT/target/cross
# Budget for the aarch64 router build (bytes; 1 MB = 1,000,000 bytes).
BUDGET_PACKAGE=${BUDGET_PACKAGE:-3000000}
BUDGET_BINARY=${BUDGET_BINARY:-5500000}
TARGET_LITE_BINARY=3000000
ZIGBUILD_VERSION=0.24.1
# zig supplies the musl libc the router binaries link. Pinned: from 0.16 on, zig replaces
# musl's malloc with its own, whose calloc writes zeros over every fresh page, so each
# zeroed buffer is resident at once (quinn's 2.9 MiB receive buffer per endpoint, for one):
# the x86_64 router node idled at 12.0 MiB RSS with the mesh on, 6.1 MiB with musl's malloc.
ZIG_VERSION=0.15.2
# Idle anonymous memory allowed for the x86_64 router node (mesh on loopback, no clients).
BUDGET_IDLE_ANON_KIB=${BUDGET_IDLE_ANON_KIB:-2048}

triple() {
    case "$1" in
    aarch64) echo aarch64-unknown-linux-musl ;;
    armv7) echo armv7-unknown-linux-musleabihf ;;
    x86_64) echo x86_64-unknown-linux-musl ;;
    mipsel) echo mipsel-unknown-linux-musl ;;
    *) echo "cross-build: unknown target $1 (aarch64, armv7, x86_64, mipsel)" >&2; exit 2 ;;
    esac
}
# OpenWrt package architectures each binary serves.
openwrt_arches() {
    case "$1" in
    aarch64) echo "aarch64_cortex-a53 aarch64_generic" ;;
    armv7) echo "arm_cortex-a7_neon-vfpv4" ;;
    x86_64) echo "x86_64" ;;
    mipsel) echo "mipsel_24kc" ;;
    esac
}
qemu_for() {
    case "$1" in
    aarch64) echo qemu-aarch64-static ;;
    armv7) echo qemu-arm-static ;;
    x86_64) echo qemu-x86_64-static ;;
    mipsel) echo qemu-mipsel-static ;;
    esac
}

# --- what this needs, installed if missing -------------------------------------------------
apt_missing=()
command -v qemu-aarch64-static >/dev/null || apt_missing+=(qemu-user-static)
command -v jq >/dev/null || apt_missing+=(jq)
if [ ${#apt_missing[@]} -gt 0 ]; then
    echo "cross-build: installing ${apt_missing[*]}"
    DEBIAN_FRONTEND=noninteractive apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${apt_missing[@]}" >/dev/null
fi
rustup component list --installed | grep -q '^rust-src' || rustup component add rust-src
# -Zbuild-std builds std itself, but aarch64 and x86_64 still link with the musl crt objects
# (crt1.o, crti.o …) of their rust-std component. armv7 and mipsel have no rust-std to
# download (armv7 links with zig's crt objects, see rustflags below).
for triple in aarch64-unknown-linux-musl x86_64-unknown-linux-musl; do
    if ! rustup target list --installed | grep -qx "$triple"; then
        echo "cross-build: installing the $triple target"
        rustup target add "$triple"
    fi
done
if [ "$(python3 -m ziglang version 2>/dev/null)" != "$ZIG_VERSION" ]; then
    echo "cross-build: installing zig $ZIG_VERSION (PyPI ziglang)"
    python3 -m pip install --quiet "ziglang==$ZIG_VERSION"
fi
# cargo does not relink when only the linker changed: start the router builds afresh when
# they were linked by another zig.
if [ -d "$CROSS_DIR" ] && [ "$(cat "$CROSS_DIR/zig-version" 2>/dev/null)" != "$ZIG_VERSION" ]; then
    echo "cross-build: $CROSS_DIR was linked by another zig; removing it"
    rm -rf "$CROSS_DIR"
fi
mkdir -p "$CROSS_DIR"
echo "$ZIG_VERSION" >"$CROSS_DIR/zig-version"
if ! cargo-zigbuild --version 2>/dev/null | grep -qF "$ZIGBUILD_VERSION"; then
    echo "cross-build: installing cargo-zigbuild $ZIGBUILD_VERSION"
    cargo install --quiet --locked cargo-zigbuild --version "$ZIGBUILD_VERSION"
fi

# --- builds -------------------------------------------------------------------------------
# rustflags <target>: the router flags (see docs/size.md); armv7 links against zig's musl
# crt objects, not the self-contained ones rustc would look for.
rustflags() {
    local f="-Zunstable-options -Cpanic=immediate-abort -Cforce-unwind-tables=no -Zlocation-detail=none"
    [ "$1" = armv7 ] && f="$f -Clink-self-contained=no"
    # ROUTER_EXTRA_RUSTFLAGS: flags to try (size experiments, see docs/size.md).
    echo "$f${ROUTER_EXTRA_RUSTFLAGS:+ $ROUTER_EXTRA_RUSTFLAGS}"
}

# cargo_cross <subcommand> <target> <features> [args]
cargo_cross() {
    local sub=$1 t=$2 features=$3
    shift 3
    local cmd=(cargo "$sub") last=()
    # mipsel: the binary is linked as a plain static executable, not static-pie. In the
    # static-pie the weak, undefined __cxa_thread_atexit_impl came out as the load address
    # instead of null, and std called it for the first thread-local with a destructor
    # (tokio's runtime context): SIGSEGV at the ELF header right after start. Only the final
    # crate gets the static relocation model (`cargo rustc`): a dependency's cdylib cannot
    # be linked with it.
    if [ "$sub" = zigbuild ] && [ "$t" = mipsel ]; then
        cmd=(cargo-zigbuild rustc)
        last=(-- -Crelocation-model=static)
    fi
    RUSTC_BOOTSTRAP=1 RUSTFLAGS="$(rustflags "$t")" CARGO_PROFILE_RELEASE_OPT_LEVEL=z \
        "${cmd[@]}" --release --locked -p ferry-node --bin ferry \
        --no-default-features --features "$features" --target "$(triple "$t")" \
        -Zbuild-std=std,panic_abort -Zbuild-std-features=optimize_for_size \
        --target-dir "$CROSS_DIR" "$@" "${last[@]}"
}

# scripts/size-by-crate.sh sources this file for the tools and the helpers above.
if [ -n "${SIZE_BY_CRATE:-}" ]; then
    return 0
fi

mkdir -p "$DIST"
rm -f "$DIST"/*.ipk "$DIST"/*.apk "$DIST"/size-report.txt
declare -a BUILT=()   # entries "variant target"

build() { # build <variant full|lite> <target>
    local variant=$1 t=$2 features=router name=ferry
    if [ "$variant" = full ]; then
        features=router,iroh,mdns
    else
        name=ferry-lite
    fi
    echo "cross-build: $name for $(triple "$t") (features $features)"
    local start=$SECONDS
    cargo_cross zigbuild "$t" "$features"
    cp "$CROSS_DIR/$(triple "$t")/release/ferry" "$DIST/$name-$(triple "$t")"
    echo "cross-build: $name for $t built in $((SECONDS - start)) s"
    for arch in $(openwrt_arches "$t"); do
        packaging/build-ipk.sh --binary "$DIST/$name-$(triple "$t")" --arch "$arch" \
            --name "$name" --out "$DIST" >/dev/null
        # The .apk (OpenWrt 25.12) too, where apk-tools 3 is at hand (APK=path): it says
        # once that it is not and makes nothing.
        packaging/build-apk.sh --binary "$DIST/$name-$(triple "$t")" --arch "$arch" \
            --name "$name" --out "$DIST" >/dev/null 2>>"$DIST/apk-skipped"
    done
    BUILT+=("$variant $t")
}

for t in $TARGETS; do build full "$t"; done
for t in $LITE_TARGETS; do build lite "$t"; done
for t in $CHECK_TARGETS; do
    echo "cross-build: cargo check for $(triple "$t")"
    cargo_cross check "$t" router,iroh,mdns
done

# start_node <work dir> <port> <command...>: a router node on loopback only (mesh on
# 127.0.0.1, no mDNS), its data and admin socket in the work dir, its log in node.log there.
# Sets NODE_PID.
NODE_PID=
start_node() {
    local w=$1 port=$2
    shift 2
    "$@" node --data-dir "$w/data" --listen "127.0.0.1:$port" --mesh-listen 127.0.0.1:0 \
        --no-mdns --admin-socket "$w/admin.sock" 2>"$w/node.log" &
    NODE_PID=$!
}

# --- qemu: --version and a short real run ---------------------------------------------------
HOST_FERRY=${FERRY_HOST_BIN:-}
qemu_run() { # qemu_run <variant> <target>
    local variant=$1 t=$2 name=ferry
    [ "$variant" = lite ] && name=ferry-lite
    local bin q
    bin="$DIST/$name-$(triple "$t")"
    q=$(qemu_for "$t")
    local w
    w=$(mktemp -d /tmp/ferry-qemu.XXXXXX)
    local port=$((20000 + RANDOM % 20000))
    echo "qemu: $name $t: $("$q" "$bin" --version)"
    # The node under emulation; the client is the host's ferry.
    start_node "$w" "$port" "$q" "$bin"
    local pid=$NODE_PID
    export FERRY_KNOWN_NODES="$w/known_nodes" FERRY_NODE="127.0.0.1:$port"
    local ok=0
    for _ in $(seq 1 100); do
        if "$HOST_FERRY" status >/dev/null 2>&1; then ok=1; break; fi
        sleep 0.2
    done
    if [ $ok != 1 ]; then
        echo "qemu: $name $t: node did not come up" >&2
        cat "$w/node.log" >&2
        kill -9 "$pid" 2>/dev/null || true
        return 1
    fi
    "$HOST_FERRY" id new --out "$w/alice.json" >/dev/null
    "$HOST_FERRY" id new --out "$w/bob.json" >/dev/null
    local alice
    alice=$("$HOST_FERRY" id show --id "$w/alice.json" --json | jq -r .public_key)
    "$HOST_FERRY" inbox --id "$w/alice.json" >/dev/null # publishes alice's key
    local text="hello from the host to a $t node under qemu"
    "$HOST_FERRY" send --id "$w/bob.json" --to "$alice" "$text" >/dev/null
    local got
    got=$("$HOST_FERRY" inbox --id "$w/alice.json" --json | jq -r .text)
    local store
    store=$("$q" "$bin" store --admin-socket "$w/admin.sock" --json | jq -c .)
    kill -TERM "$pid"
    local rc=0
    wait "$pid" || rc=$?
    unset FERRY_KNOWN_NODES FERRY_NODE
    if [ "$got" != "$text" ] || [ $rc != 0 ]; then
        echo "qemu: $name $t: FAILED (received '$got', node exit $rc)" >&2
        cat "$w/node.log" >&2
        return 1
    fi
    echo "qemu: $name $t: a message enqueued and fetched through the emulated node; admin store: $store; SIGTERM exit 0"
    rm -rf "$w"
}
if [ "${NO_QEMU:-}" != 1 ] && [ ${#BUILT[@]} -gt 0 ]; then
    if [ -z "$HOST_FERRY" ]; then
        cargo build --release --locked --bin ferry
        TARGET_DIR=${CARGO_TARGET_DIR:-target}
        case $TARGET_DIR in /*) ;; *) TARGET_DIR=$ROOT/$TARGET_DIR ;; esac
        HOST_FERRY=$TARGET_DIR/release/ferry
    fi
    for b in "${BUILT[@]}"; do
        # shellcheck disable=SC2086
        qemu_run $b
    done
fi

# --- idle memory: the x86_64 router node runs natively here --------------------------------
IDLE_RSS_KIB='' IDLE_ANON_KIB=''
idle_memory() { # sets IDLE_RSS_KIB and IDLE_ANON_KIB
    local w pid
    w=$(mktemp -d /tmp/ferry-idle.XXXXXX)
    start_node "$w" $((20000 + RANDOM % 20000)) "$DIST/ferry-$(triple x86_64)"
    pid=$NODE_PID
    for _ in $(seq 1 50); do
        [ -S "$w/admin.sock" ] && break
        sleep 0.2
    done
    sleep 3 # settled: endpoints bound, store open, timers idle
    if ! kill -0 "$pid" 2>/dev/null; then
        echo "idle memory: the x86_64 router node exited" >&2
        cat "$w/node.log" >&2
        return 1
    fi
    IDLE_RSS_KIB=$(awk '/^VmRSS:/ {print $2}' "/proc/$pid/status")
    IDLE_ANON_KIB=$(awk '/^Anonymous:/ {print $2}' "/proc/$pid/smaps_rollup")
    kill -TERM "$pid"
    wait "$pid" || true
    rm -rf "$w"
}
for b in "${BUILT[@]}"; do
    if [ "$b" = "full x86_64" ]; then idle_memory; fi
done

# --- size report ------------------------------------------------------------------------------
status=0
{
    echo "Ferry router builds, $(git describe --always --dirty 2>/dev/null || echo unknown), $(date -u +%Y-%m-%d)"
    printf '%-12s %-34s %12s %14s %24s\n' variant target "binary (B)" "package (B)" "package arch"
    for b in "${BUILT[@]}"; do
        read -r variant t <<<"$b"
        name=ferry
        [ "$variant" = lite ] && name=ferry-lite
        bin_size=$(stat -c %s "$DIST/$name-$(triple "$t")")
        for arch in $(openwrt_arches "$t"); do
            pkg=$(ls "$DIST/${name}_"*"_$arch.ipk")
            printf '%-12s %-34s %12s %14s %24s\n' "$name" "$(triple "$t")" "$bin_size" "$(stat -c %s "$pkg")" "$arch"
            for apk in "$DIST/$name-"*"_$arch.apk"; do
                [ -e "$apk" ] || continue
                printf '%-12s %-34s %12s %14s %24s\n' "$name" "$(triple "$t")" "$bin_size" "$(stat -c %s "$apk")" "$arch (.apk)"
            done
        done
    done
    if [ -n "$IDLE_ANON_KIB" ]; then
        echo "idle x86_64 router node (mesh on loopback, no clients): RSS $IDLE_RSS_KIB KiB, anonymous $IDLE_ANON_KIB KiB"
    fi
    echo "linked by zig $ZIG_VERSION: musl with its own malloc"
    if [ -s "$DIST/apk-skipped" ]; then
        echo "no .apk packages: $(head -n1 "$DIST/apk-skipped" | sed 's/^build-apk.sh: //')"
    fi
} | tee "$DIST/size-report.txt"
rm -f "$DIST/apk-skipped"
if [ -n "$IDLE_ANON_KIB" ]; then
    if [ "$IDLE_ANON_KIB" -gt "$BUDGET_IDLE_ANON_KIB" ]; then
        echo "MEMORY BUDGET EXCEEDED: the idle x86_64 router node has $IDLE_ANON_KIB KiB anonymous memory (budget $BUDGET_IDLE_ANON_KIB KiB)" | tee -a "$DIST/size-report.txt"
        status=1
    else
        echo "memory budget met: idle x86_64 router node $IDLE_ANON_KIB KiB anonymous <= $BUDGET_IDLE_ANON_KIB KiB" | tee -a "$DIST/size-report.txt"
    fi
fi
for b in "${BUILT[@]}"; do
    read -r variant t <<<"$b"
    if [ "$variant $t" = "full aarch64" ]; then
        bin_size=$(stat -c %s "$DIST/ferry-$(triple aarch64)")
        pkg_size=$(stat -c %s "$(ls "$DIST"/ferry_*_aarch64_cortex-a53.ipk)")
        if [ "$bin_size" -gt "$BUDGET_BINARY" ] || [ "$pkg_size" -gt "$BUDGET_PACKAGE" ]; then
            echo "BUDGET EXCEEDED: aarch64 router binary $bin_size B (budget $BUDGET_BINARY), package $pkg_size B (budget $BUDGET_PACKAGE)" | tee -a "$DIST/size-report.txt"
            status=1
        else
            echo "budget met: aarch64 router binary $bin_size B <= $BUDGET_BINARY, package $pkg_size B <= $BUDGET_PACKAGE" | tee -a "$DIST/size-report.txt"
        fi
    fi
    if [ "$variant" = lite ]; then
        lite_size=$(stat -c %s "$DIST/ferry-lite-$(triple "$t")")
        if [ "$lite_size" -le "$TARGET_LITE_BINARY" ]; then
            echo "lite target met: $t lite binary $lite_size B <= $TARGET_LITE_BINARY" | tee -a "$DIST/size-report.txt"
        else
            echo "lite target missed: $t lite binary $lite_size B > $TARGET_LITE_BINARY" | tee -a "$DIST/size-report.txt"
        fi
    fi
done
exit $status
