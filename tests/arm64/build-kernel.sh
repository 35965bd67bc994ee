#!/bin/bash
# Fetch a Debian kernel and build a tiny busybox initramfs for it.
# Usage: build-kernel.sh OUT_DIR KVER "MODULE..."
# (KVER like 6.1.0-57-arm64; apt is set up by harness.sh through APT_CONFIG
# for the kernel's suite and architecture.)
# Produces OUT_DIR/vmlinuz, OUT_DIR/initrd.gz, OUT_DIR/kver.
# The initramfs loads MODULEs (the disk drivers, ext4, and on x86 kvm) and
# their dependencies from the same kernel package, mounts the disks labelled
# e2eroot (rootfs) and e2ework (work disk, at /mnt/work) and switch_roots to
# /mnt/work/guest/init.sh.
set -euo pipefail
out=$1
kver=$2
want=$3
work=$(mktemp -d "${out}.build.XXXXXX")
trap 'rm -rf "$work"' EXIT

cd "$work"
apt-get download -q "linux-image-${kver}" busybox-static >/dev/null
dpkg-deb -x linux-image-"${kver}"_*.deb kernel
dpkg-deb -x busybox-static_*.deb bb

mdir="kernel/lib/modules/$kver"
# Resolve module dependencies on the host (modinfo reads foreign-arch .ko).
order=()
seen=" "
findko() {
    find "$mdir" -name "$1.ko*" -o -name "$(echo "$1" | tr _ -).ko*" | head -n1
}
add() {
    local m=$1 ko dep
    case "$seen" in *" $m "*) return 0 ;; esac
    seen="$seen$m "
    ko=$(findko "$m")
    if [ -z "$ko" ]; then
        echo "build-kernel: $m not a module (built in?)" >&2
        return 0
    fi
    for dep in $(modinfo -F depends "$ko" | tr ',' ' '); do
        add "$dep"
    done
    order+=("$ko")
}
for m in $want; do add "$m"; done

mkdir -p initrd/bin initrd/proc initrd/sys initrd/dev initrd/newroot initrd/lib/modules
cp bb/bin/busybox initrd/bin/busybox
: > initrd/modules.order
for ko in "${order[@]}"; do
    case "$ko" in
        *.ko) cp "$ko" initrd/lib/modules/ ;;
        *.ko.xz) xz -dc "$ko" > "initrd/lib/modules/$(basename "$ko" .xz)" ;;
        *.ko.zst) zstd -qdc "$ko" > "initrd/lib/modules/$(basename "$ko" .zst)" ;;
        *) echo "unknown module format $ko" >&2; exit 1 ;;
    esac
    b=$(basename "$ko"); echo "${b%%.ko*}" >> initrd/modules.order
done
echo "build-kernel: initramfs modules: $(tr '\n' ' ' < initrd/modules.order)"

cat > initrd/init <<'EOF'
#!/bin/busybox sh
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
for m in $(cat /modules.order); do
    insmod /lib/modules/$m.ko || echo "e2e-initramfs: insmod $m failed"
done
i=0
while [ ! -b /dev/vdb ] && [ $i -lt 100 ]; do sleep 0.1; i=$((i+1)); done
fail() { echo "E2E-INITRAMFS-FAIL: $*"; echo o > /proc/sysrq-trigger; sleep 10; }
# virtio-mmio probes in reverse order: find the disks by label, not by name
rootdev=""; workdev=""
for d in /dev/vd?; do
    # ext4 volume label: superblock at 1024, s_volume_name at +120
    case "$(dd if="$d" bs=1 skip=1144 count=7 2>/dev/null)" in
        e2eroot) rootdev=$d ;;
        e2ework) workdev=$d ;;
    esac
done
mount -t ext4 "$rootdev" /newroot || fail "mount root ($rootdev)"
mount -t ext4 "$workdev" /newroot/mnt/work || fail "mount work ($workdev)"
umount /proc /sys
umount /dev
exec switch_root /newroot /mnt/work/guest/init.sh
fail "switch_root"
EOF
chmod +x initrd/init
(cd initrd && find . | cpio -o -H newc --quiet | gzip -9) > initrd.gz

mkdir -p "$out"
cp kernel/boot/vmlinuz-"$kver" "$out/vmlinuz"
cp initrd.gz "$out/initrd.gz"
echo "$kver" > "$out/kver"
ls kernel/boot/config-"$kver" >/dev/null && cp kernel/boot/config-"$kver" "$out/config"
echo "build-kernel: wrote $out"
