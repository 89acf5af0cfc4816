#!/bin/sh
# Builds an OpenWrt .apk (apk-tools 3, OpenWrt 25.12 and later) around a ferry binary, with
# `apk mkpkg` as the OpenWrt SDK does:
#
#   packaging/build-apk.sh --binary target/.../ferry --arch aarch64_cortex-a53 [--out DIR]
#                          [--name ferry|ferry-lite] [--version 0.1.0-r1]
#
# The package holds what the .ipk holds (packaging/package-files.sh), and, as the SDK's do,
# /lib/apk/packages/<name>.conffiles and .conffiles_static naming /etc/config/ferry (what
# sysupgrade keeps); apk itself keeps a changed file under /etc on upgrade and puts the new
# default beside it as .apk-new. Scripts: post-install (a new install enables and starts
# the service, or, into an image root, enables it), pre-upgrade (stops it), post-upgrade
# (starts it, leaving it enabled or disabled), pre-deinstall (stops and disables it).
# ferry-lite provides ferry (and ferry, the default variant, has provider-priority 100);
# the binary is static, so the package depends on nothing.
#
# Needs apk-tools 3 (`apk`, or APK=path): no registry CI can reach carries it, so without it
# this prints why and makes nothing (exit 0). Build it from alpinelinux/apk-tools (see
# docs/openwrt.md). Runs as root or under fakeroot, so that the files are root's.
set -eu

root=$(cd "$(dirname "$0")/.." && pwd)
binary='' arch='' out="$root/target/packages" name=ferry version=''
while [ $# -gt 0 ]; do
	case "$1" in
	--binary) binary=$2; shift 2 ;;
	--arch) arch=$2; shift 2 ;;
	--out) out=$2; shift 2 ;;
	--name) name=$2; shift 2 ;;
	--version) version=$2; shift 2 ;;
	*) echo "build-apk.sh: unknown argument $1" >&2; exit 2 ;;
	esac
done
if [ -z "$binary" ] || [ -z "$arch" ]; then
	echo "build-apk.sh: --binary and --arch are required" >&2
	exit 2
fi
[ -x "$binary" ] || { echo "build-apk.sh: $binary is not an executable" >&2; exit 2; }
apk=${APK:-$(command -v apk || true)}
if [ -z "$apk" ] || ! "$apk" --version 2>/dev/null | grep -q '^apk-tools 3\.'; then
	echo "build-apk.sh: no apk-tools 3 here (apk mkpkg); no .apk made. Set APK=path/to/apk." >&2
	exit 0
fi
if [ "$(id -u)" != 0 ]; then
	command -v fakeroot >/dev/null || { echo "build-apk.sh: run as root or install fakeroot" >&2; exit 2; }
	exec fakeroot "$0" --binary "$binary" --arch "$arch" --out "$out" --name "$name" \
		${version:+--version "$version"}
fi
if [ -z "$version" ]; then
	version="$(sed -n 's/^version = "\(.*\)"/\1/p' "$root/Cargo.toml" | head -n1)-r1"
fi
: "${SOURCE_DATE_EPOCH:=$(git -C "$root" log -1 --format=%ct 2>/dev/null || echo 0)}"
export SOURCE_DATE_EPOCH

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
# shellcheck disable=SC1091
. "$root/packaging/package-files.sh"
stage_files "$work/data" "$binary"
mkdir -p "$work/data/lib/apk/packages"
printf '/etc/config/ferry\n' >"$work/data/lib/apk/packages/$name.conffiles"
printf '/etc/config/ferry %s\n' "$(sha256sum "$work/data/etc/config/ferry" | cut -d' ' -f1)" \
	>"$work/data/lib/apk/packages/$name.conffiles_static"
chown -R 0:0 "$work/data"
find "$work/data" -exec touch -h -d "@$SOURCE_DATE_EPOCH" {} +

mkdir -p "$work/scripts"
write_postinst >"$work/scripts/post-install"
{
	echo '#!/bin/sh'
	echo 'export PKG_UPGRADE=1'
	write_postinst | sed '1d'
} >"$work/scripts/post-upgrade"
{
	echo '#!/bin/sh'
	echo 'export PKG_UPGRADE=1'
	write_prerm | sed '1d'
} >"$work/scripts/pre-upgrade"
write_prerm >"$work/scripts/pre-deinstall"

set -- --info "name:$name" --info "version:$version" \
	--info "description:$(package_description "$name")" --info "arch:$arch" \
	--info "license:MIT OR Apache-2.0" --info "origin:ferry" \
	--info "url:https://example.invalid/ferry" \
	--info "maintainer:Ferry developers <ferry@example.invalid>"
case "$name" in
ferry-lite) set -- "$@" --info "provides:ferry=$version" --info "provider-priority:1" ;;
*) set -- "$@" --info "provider-priority:100" ;;
esac
for s in post-install pre-upgrade post-upgrade pre-deinstall; do
	set -- "$@" --script "$s:$work/scripts/$s"
done
mkdir -p "$out"
pkg="$out/${name}-${version}_${arch}.apk"
"$apk" mkpkg "$@" --files "$work/data" --output "$pkg"
echo "$pkg"
