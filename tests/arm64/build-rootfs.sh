#!/bin/bash
# Build the arm64 guest root filesystem image (ext4) with mmdebstrap.
# Usage: build-rootfs.sh OUT_IMG ABI
# Called by harness.sh; the image is cached under a key that includes a hash
# of this file, packages.txt and the kernel ABI, so edit freely.
set -euo pipefail
out=$1
abi=$2
kver="6.1.0-${abi}-arm64"
here=$(cd "$(dirname "$0")" && pwd)

pkgs=$(sed -e 's/#.*//' -e "s/@N@/${abi}/g" "$here/packages.txt" | tr -s ' \n' ',' | sed -e 's/^,//' -e 's/,$//')
work=$(mktemp -d "${out}.build.XXXXXX")
trap 'rm -rf "$work"' EXIT
root="$work/root"

echo "build-rootfs: mmdebstrap arm64 minbase + $pkgs"
mmdebstrap --arch=arm64 --variant=minbase --include="$pkgs" \
    --aptopt='Acquire::Retries "3"' \
    --dpkgopt='path-exclude=/usr/share/doc/*' \
    --dpkgopt='path-exclude=/usr/share/man/*' \
    --dpkgopt='path-exclude=/usr/share/locale/*' \
    bookworm "$root" \
    "deb http://deb.debian.org/debian bookworm main" \
    "deb http://deb.debian.org/debian bookworm-updates main" \
    "deb http://deb.debian.org/debian-security bookworm-security main"

# bcc finds kernel headers through /lib/modules/<kver>/build (and, on Debian's
# split header packages, /lib/modules/<kver>/source -> the -common tree).
mkdir -p "$root/lib/modules/$kver"
ln -sfn "/usr/src/linux-headers-$kver" "$root/lib/modules/$kver/build"
common=$(cd "$root/usr/src" && ls -d linux-headers-6.1.0-"${abi}"-common 2>/dev/null || true)
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
