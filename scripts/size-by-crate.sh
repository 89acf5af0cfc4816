#!/usr/bin/env bash
# shellcheck disable=SC2317  # shellcheck follows the source below to cross-build.sh's exit
# What a router build pays for, crate by crate: builds the router binary as
# scripts/cross-build.sh does but keeps its symbol table, and sums the sizes of the code and
# data symbols by the crate that defines them (the first path segment of the demangled name;
# for `<T as Trait>::f` the crate of T). With fat LTO much is inlined across crates, so this
# says where code comes from, not a removal's exact saving; measure that by building.
#
#   scripts/size-by-crate.sh [TARGET] [FEATURES]      # default: mipsel router (the lite build)
#   scripts/size-by-crate.sh aarch64 router,iroh,mdns  # the full aarch64 build
#
# Writes target/dist/size-by-crate-<target>-<features>.txt. Needs what cross-build.sh needs
# (it installs it) and llvm-tools (rustup component, installed here).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
T=${1:-mipsel}
FEATURES=${2:-router}
TARGET_DIR=${CARGO_TARGET_DIR:-target}
# cross-build.sh's helpers (triple, rustflags, cargo_cross) without its builds.
export TARGETS="" LITE_TARGETS="" NO_QEMU=1
# shellcheck source=scripts/cross-build.sh
SIZE_BY_CRATE=1 source scripts/cross-build.sh

rustup component add llvm-tools >/dev/null 2>&1
NM=$(find "$(rustc --print sysroot)/lib/rustlib" -name llvm-nm -type f | head -n1)
[ -x "$NM" ] || { echo "size-by-crate: llvm-nm not found (rustup component add llvm-tools)" >&2; exit 2; }

# A target directory of its own: the same flags with symbols kept would otherwise rebuild
# over cross-build.sh's.
CROSS_DIR="$TARGET_DIR/size-by-crate"
CARGO_PROFILE_RELEASE_STRIP=false CARGO_PROFILE_RELEASE_DEBUG=false \
    cargo_cross zigbuild "$T" "$FEATURES"
BIN="$CROSS_DIR/$(triple "$T")/release/ferry"
OUT="$DIST/size-by-crate-$T-${FEATURES//,/-}.txt"
mkdir -p "$DIST"
{
    echo "Ferry $(git describe --always --dirty), $(triple "$T"), features $FEATURES: symbol bytes by crate"
    echo "binary with symbols: $(stat -c %s "$BIN") B; stripped as shipped: see target/dist/size-report.txt"
    "$NM" --print-size --size-sort --demangle --radix=d "$BIN" | awk '
    $3 ~ /^[tTdDrRbB]$/ {
        size = $2 + 0; name = $0
        sub(/^[^ ]+ [^ ]+ [^ ]+ /, "", name)
        s = name
        while (substr(s, 1, 1) == "<" || substr(s, 1, 1) == "&" || substr(s, 1, 1) == "(") s = substr(s, 2)
        sub(/^(dyn |mut |const |impl )+/, "", s)
        crate = s
        sub(/::.*/, "", crate); sub(/[<> ,(].*/, "", crate)
        if (crate == "" || s == name && index(name, "::") == 0) crate = "[C, assembly, or unnamed]"
        by[crate] += size; total += size
    }
    END {
        for (c in by) printf "%10d  %5.1f%%  %s\n", by[c], 100 * by[c] / total, c
        printf "%10d  100.0%%  total\n", total
    }' | sort -rn
} | tee "$OUT"
echo "size-by-crate: written to $OUT"
