#!/bin/sh
# Builds an OpenWrt .ipk (opkg, OpenWrt 24.10 and earlier) around a ferry binary.
#
#   packaging/build-ipk.sh --binary target/.../ferry --arch aarch64_cortex-a53 [--out DIR]
#                          [--name ferry|ferry-lite] [--version 0.1.0-r1]
#
# An .ipk is a gzip'd tar of ./debian-binary, ./data.tar.gz and ./control.tar.gz. The
# package installs /usr/bin/ferry, /etc/init.d/ferry and /etc/config/ferry (a conffile,
# kept across upgrades and sysupgrade). The output is reproducible: sorted entries owned by
# root, timestamps from SOURCE_DATE_EPOCH (default: the last commit).
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
	*) echo "build-ipk.sh: unknown argument $1" >&2; exit 2 ;;
	esac
done
if [ -z "$binary" ] || [ -z "$arch" ]; then
	echo "build-ipk.sh: --binary and --arch are required" >&2
	exit 2
fi
[ -x "$binary" ] || { echo "build-ipk.sh: $binary is not an executable" >&2; exit 2; }
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

installed_size=$(find "$work/data" -type f -exec stat -c %s {} + | awk '{s += $1} END {print s}')
mkdir -p "$work/control"
cat >"$work/control/control" <<CONTROL
Package: $name
Version: $version
Depends: libc
$(package_relations "$name")
Source: https://example.invalid/ferry
SourceName: ferry
License: MIT OR Apache-2.0
Section: net
URL: https://example.invalid/ferry
Maintainer: Ferry developers <ferry@example.invalid>
Architecture: $arch
Installed-Size: $installed_size
Description: $(package_description "$name")
CONTROL
printf '/etc/config/ferry\n' >"$work/control/conffiles"
write_postinst >"$work/control/postinst"
write_prerm >"$work/control/prerm"
chmod 0755 "$work/control/postinst" "$work/control/prerm"

tgz() { # tgz <dir> <output>: a reproducible tar.gz of the directory's contents
	tar -C "$1" --sort=name --mtime="@$SOURCE_DATE_EPOCH" --owner=0 --group=0 \
		--numeric-owner --format=gnu -cf - . | gzip -9n >"$2"
}
mkdir -p "$work/ipk"
printf '2.0\n' >"$work/ipk/debian-binary"
tgz "$work/data" "$work/ipk/data.tar.gz"
tgz "$work/control" "$work/ipk/control.tar.gz"
mkdir -p "$out"
pkg="$out/${name}_${version}_${arch}.ipk"
tar -C "$work/ipk" --mtime="@$SOURCE_DATE_EPOCH" --owner=0 --group=0 --numeric-owner \
	--format=gnu -cf - ./debian-binary ./data.tar.gz ./control.tar.gz | gzip -9n >"$pkg"
echo "$pkg"
