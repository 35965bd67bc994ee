#!/bin/bash
# Emulated-arm64 KVM end-to-end harness for kvmexit.
#
#   harness.sh deps        install host packages (apt), enable qemu-user binfmt
#   harness.sh build       fetch arm64 kernel, build initramfs + rootfs (cached)
#   harness.sh run OUTDIR  boot the emulated host once, run all guest scenarios,
#                          copy results to OUTDIR (needs a finished `build`)
#   harness.sh all         deps + build + pytest tests/arm64 (the default)
#
# Cache: ${KVMEXIT_ARM64_CACHE:-/var/cache/kvmexit-arm64}; images are keyed by
# a hash of their inputs, so a warm run rebuilds nothing.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
cache=${KVMEXIT_ARM64_CACHE:-/var/cache/kvmexit-arm64}
boot_timeout=${KVMEXIT_ARM64_BOOT_TIMEOUT:-2700}

log() { echo "arm64-harness: $*" >&2; }

cmd_deps() {
    local need=()
    command -v qemu-system-aarch64 >/dev/null || need+=(qemu-system-arm)
    [ -e /usr/libexec/qemu-binfmt/aarch64-binfmt-P ] || [ -e /usr/bin/qemu-aarch64-static ] \
        || need+=(qemu-user-static)
    command -v update-binfmts >/dev/null || need+=(binfmt-support)
    command -v mmdebstrap >/dev/null || need+=(mmdebstrap)
    command -v arch-test >/dev/null || need+=(arch-test)
    command -v aarch64-linux-gnu-gcc >/dev/null || need+=(gcc-aarch64-linux-gnu libc6-dev-arm64-cross)
    command -v mke2fs >/dev/null || need+=(e2fsprogs)
    command -v debugfs >/dev/null || need+=(e2fsprogs)
    command -v cpio >/dev/null || need+=(cpio)
    command -v modinfo >/dev/null || need+=(kmod)
    command -v timeout >/dev/null || need+=(coreutils)
    if ! dpkg --print-foreign-architectures | grep -qx arm64; then
        dpkg --add-architecture arm64
        need+=(__update__)
    fi
    if [ ${#need[@]} -gt 0 ]; then
        log "installing host packages: ${need[*]}"
        apt-get update -q >/dev/null
        local pk=()
        for p in "${need[@]}"; do [ "$p" = __update__ ] || pk+=("$p"); done
        if [ ${#pk[@]} -gt 0 ]; then
            DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${pk[@]}" >/dev/null
        fi
    fi
    # qemu-user binfmt for mmdebstrap's arm64 maintainer scripts
    if [ ! -e /proc/sys/fs/binfmt_misc/register ]; then
        mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc || true
    fi
    if [ ! -e /proc/sys/fs/binfmt_misc/qemu-aarch64 ]; then
        update-binfmts --enable qemu-aarch64 || true
    fi
    [ -e /proc/sys/fs/binfmt_misc/qemu-aarch64 ] || { log "qemu-aarch64 binfmt not registered"; exit 1; }
}

# Pick the Debian 6.1 arm64 kernel ABI N whose linux-image and linux-headers
# candidates have the same version (newest first). KVMEXIT_ARM64_ABI overrides.
pick_abi() {
    if [ -n "${KVMEXIT_ARM64_ABI:-}" ]; then echo "$KVMEXIT_ARM64_ABI"; return; fi
    local list n vi vh
    list=$(apt-cache search --names-only '^linux-headers-6\.1\.0-[0-9]+-arm64$' \
        | sed -n 's/^linux-headers-6\.1\.0-\([0-9]*\)-arm64 .*/\1/p' | sort -rn)
    if [ -z "$list" ]; then
        apt-get update -q >/dev/null
        list=$(apt-cache search --names-only '^linux-headers-6\.1\.0-[0-9]+-arm64$' \
            | sed -n 's/^linux-headers-6\.1\.0-\([0-9]*\)-arm64 .*/\1/p' | sort -rn)
    fi
    for n in $list; do
        vi=$(apt-cache policy "linux-image-6.1.0-$n-arm64:arm64" | sed -n 's/^ *Candidate: //p')
        vh=$(apt-cache policy "linux-headers-6.1.0-$n-arm64:arm64" | sed -n 's/^ *Candidate: //p')
        if [ -n "$vi" ] && [ "$vi" != "(none)" ] && [ "$vi" = "$vh" ]; then
            echo "$n $vi"
            return
        fi
    done
    log "no matching linux-image/linux-headers 6.1 arm64 pair in apt"
    exit 1
}

cmd_build() {
    mkdir -p "$cache" "$cache/logs"
    local abi_ver abi kver_pkg kkey rkey kdir rimg updated=${1:-}
    abi_ver=$(pick_abi)
    abi=${abi_ver%% *}
    kver_pkg=${abi_ver#* }
    kkey=$( { echo "abi=$abi pkg=$kver_pkg"; cat "$here/build-kernel.sh"; } | sha256sum | cut -c1-16)
    rkey=$( { echo "abi=$abi pkg=$kver_pkg"; cat "$here/build-rootfs.sh" "$here/packages.txt"; } \
        | sha256sum | cut -c1-16)
    kdir="$cache/kernel-$abi-$kkey"
    rimg="$cache/rootfs-$abi-$rkey.img"
    if [ -z "$updated" ] && { [ ! -e "$kdir/vmlinuz" ] || [ ! -e "$rimg" ]; }; then
        # Something must be built: refresh the package lists first (stale lists
        # name kernel versions the mirror may no longer have), then decide again.
        log "cache miss: apt-get update, then pick the kernel again"
        apt-get update -q >/dev/null
        cmd_build updated
        return
    fi
    if [ -e "$kdir/vmlinuz" ]; then
        log "kernel cached: $kdir"
    else
        log "building kernel/initramfs -> $kdir"
        rm -rf "$kdir"
        bash "$here/build-kernel.sh" "$kdir" "$abi"
    fi
    if [ -e "$rimg" ]; then
        log "rootfs cached: $rimg"
    else
        log "building rootfs (mmdebstrap under qemu-user, several minutes) -> $rimg"
        bash "$here/build-rootfs.sh" "$rimg" "$abi" > "$cache/logs/rootfs-build.log" 2>&1 || {
            log "rootfs build failed, log: $cache/logs/rootfs-build.log"; tail -n 30 "$cache/logs/rootfs-build.log" >&2; exit 1; }
    fi
    cat > "$cache/current.env.tmp" <<EOF
ABI=$abi
KPKG=$kver_pkg
KVER=$(cat "$kdir/kver")
KERNEL=$kdir/vmlinuz
INITRD=$kdir/initrd.gz
ROOTFS=$rimg
EOF
    mv "$cache/current.env.tmp" "$cache/current.env"
    log "build ready: $cache/current.env"
}

qemu_pid=""
cleanup_qemu() {
    if [ -n "$qemu_pid" ] && kill -0 "$qemu_pid" 2>/dev/null; then
        kill "$qemu_pid" 2>/dev/null || true
        sleep 1
        kill -9 "$qemu_pid" 2>/dev/null || true
    fi
    qemu_pid=""
}

cmd_run() {
    local out=$1
    [ -e "$cache/current.env" ] || { log "no $cache/current.env: run '$0 build' first"; exit 2; }
    # shellcheck disable=SC1091
    . "$cache/current.env"
    for f in "$KERNEL" "$INITRD" "$ROOTFS"; do
        [ -e "$f" ] || { log "missing cached image $f: run '$0 build'"; exit 2; }
    done
    mkdir -p "$out" "$cache/logs"
    # global: the EXIT trap runs after this function returns
    stage=$(mktemp -d /tmp/kvmexit-arm64-run.XXXXXX)
    trap 'cleanup_qemu; rm -rf "$stage"' EXIT
    trap 'cleanup_qemu; exit 130' INT TERM

    # The code under test and the guest scripts go on a fresh work disk.
    mkdir -p "$stage/work/guest" "$stage/work/py" "$stage/work/results"
    cp -a "$here/guest/." "$stage/work/guest/"
    # KVMEXIT_ARM64_SRC: test another kvmexit package directory (default: this tree's)
    local src=${KVMEXIT_ARM64_SRC:-$repo/src/kvmexit}
    if [ -d "$src" ]; then
        cp -a "$src" "$stage/work/py/kvmexit"
        find "$stage/work/py" -name __pycache__ -prune -exec rm -rf {} +
    fi
    aarch64-linux-gnu-gcc -O2 -static -pthread -Wall -Werror -o "$stage/work/guest/e2evmm" "$here/vmm/e2evmm.c"
    cp "$here/scenario.conf" "$stage/work/guest/scenario.conf"
    env | grep '^KVMEXIT_E2E_' > "$stage/work/guest/env.conf" || true
    echo "KVER=$KVER" >> "$stage/work/guest/env.conf"
    mke2fs -q -t ext4 -L e2ework -d "$stage/work" "$stage/work.img" 256M

    local serial="$out/serial.log"
    log "booting emulated arm64 host (kernel $KVER), serial log: $serial"
    local t0 t1
    t0=$(date +%s)
    qemu-system-aarch64 -M virt,virtualization=on,gic-version=3 -cpu max,pauth-impdef=on \
        -smp 2 -m 2048 -nographic -no-reboot -nic none -monitor none -serial "file:$serial" \
        -kernel "$KERNEL" -initrd "$INITRD" \
        -append "console=ttyAMA0 panic=-1 loglevel=4 rw" \
        -drive "if=none,id=root,file=$ROOTFS,format=raw,snapshot=on" -device virtio-blk-device,drive=root \
        -drive "if=none,id=work,file=$stage/work.img,format=raw" -device virtio-blk-device,drive=work \
        </dev/null >"$out/qemu.stdout" 2>&1 &
    qemu_pid=$!
    local waited=0
    while kill -0 "$qemu_pid" 2>/dev/null; do
        if [ "$waited" -ge "$boot_timeout" ]; then
            log "timeout after ${boot_timeout}s, killing qemu"
            cleanup_qemu
            break
        fi
        sleep 2
        waited=$((waited + 2))
    done
    wait "$qemu_pid" 2>/dev/null || true
    qemu_pid=""
    t1=$(date +%s)
    echo "$((t1 - t0))" > "$out/boot_seconds"
    log "emulated host finished after $((t1 - t0))s"

    rm -rf "$out/results"
    debugfs -R "rdump /results $out" "$stage/work.img" >/dev/null 2>&1 || true
    local keep
    keep="$cache/logs/serial-$(date +%Y%m%d-%H%M%S).log"
    cp "$serial" "$keep"
    ls -1t "$cache"/logs/serial-*.log 2>/dev/null | tail -n +21 | xargs -r rm -f
    if [ ! -e "$out/results/done" ]; then
        log "guest did not finish; serial log kept at $keep"
        tail -n 40 "$serial" >&2 || true
        exit 3
    fi
    log "results in $out/results (serial log $keep)"
}

cmd_all() {
    cmd_deps
    cmd_build
    cd "$repo"
    local py=python3
    [ -x "$repo/.venv/bin/python" ] && py="$repo/.venv/bin/python"
    if ! "$py" -c 'import pytest' 2>/dev/null; then
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends python3-pytest >/dev/null
        py=/usr/bin/python3
    fi
    KVMEXIT_REQUIRE_ARM64=1 "$py" -m pytest -v -s -p no:cacheprovider tests/arm64 "$@"
}

case "${1:-all}" in
    deps) cmd_deps ;;
    build) cmd_build ;;
    run) shift; cmd_run "${1:?usage: harness.sh run OUTDIR}" ;;
    all) shift || true; cmd_all "$@" ;;
    *) echo "usage: $0 [deps|build|run OUTDIR|all [pytest args]]" >&2; exit 2 ;;
esac
