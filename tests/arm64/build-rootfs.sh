#!/bin/bash
# Build a guest root filesystem image (ext4) with mmdebstrap.
# Usage: build-rootfs.sh OUT_IMG KVER SUITE "EXTRA_PACKAGE..." MIRROR...
# (KVER like 6.1.0-57-arm64: its architecture is the image's.)
# Called by harness.sh; the image is cached under a key that includes a hash
# of this file, packages.txt and the arguments, so edit freely.
set -euo pipefail
out=$1
kver=$2
suite=$3
extra=$4
shift 4
arch=${kver##*-}
here=$(cd "$(dirname "$0")" && pwd)

pkgs=$( { sed -e 's/#.*//' -e "s/@KVER@/${kver}/g" "$here/packages.txt"; echo "$extra"; } \
    | tr -s ' \n' ',' | sed -e 's/^,//' -e 's/,$//')
work=$(mktemp -d "${out}.build.XXXXXX")
trap 'rm -rf "$work"' EXIT
root="$work/root"

echo "build-rootfs: mmdebstrap $suite $arch minbase + $pkgs"
mmdebstrap --arch="$arch" --variant=minbase --include="$pkgs" \
    --aptopt='Acquire::Retries "3"' \
    --dpkgopt='path-exclude=/usr/share/doc/*' \
    --dpkgopt='path-exclude=/usr/share/man/*' \
    --dpkgopt='path-exclude=/usr/share/locale/*' \
    "$suite" "$root" "$@"

# bcc finds kernel headers through /lib/modules/<kver>/build (and, on Debian's
# split header packages, /lib/modules/<kver>/source -> the -common tree).
mkdir -p "$root/lib/modules/$kver"
ln -sfn "/usr/src/linux-headers-$kver" "$root/lib/modules/$kver/build"
common=$(cd "$root/usr/src" && ls -d "linux-headers-${kver%-*}-common" 2>/dev/null || true)
if [ -n "$common" ]; then
    ln -sfn "/usr/src/$common" "$root/lib/modules/$kver/source"
fi
test -e "$root/usr/src/linux-headers-$kver/include/config/auto.conf" \
    || test -e "$root/usr/src/linux-headers-$kver/.config"
mkdir -p "$root/mnt/work"
rm -rf "$root/var/cache/apt/archives/"*.deb "$root/var/lib/apt/lists/"*_Packages || true

size_mb=$(du -sm "$root" | cut -f1)
size_mb=$(( size_mb * 13 / 10 + 256 ))
rm -f "$out.tmp"
mke2fs -q -t ext4 -L e2eroot -d "$root" "$out.tmp" "${size_mb}M"
mv "$out.tmp" "$out"
echo "build-rootfs: wrote $out (${size_mb} MB)"
