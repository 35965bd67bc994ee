#!/bin/bash
# Emulated KVM host end-to-end harness for kvmexit (arm64 and x86 hosts).
#
#   harness.sh deps [HOST...]      install host packages (apt), enable qemu-user binfmt
#   harness.sh build [HOST...]     fetch the host's kernel, build initramfs + rootfs (cached)
#   harness.sh run OUTDIR [HOST]   boot the emulated host once, run all guest scenarios,
#                                  copy results to OUTDIR (needs a finished `build`)
#   harness.sh all [pytest args]   deps + build + pytest tests/arm64 (the default)
#   harness.sh hosts               the selected host names, one a line
#
# HOST is a kernel/userland pair (host_conf below): arm64-6.1 (Debian 12),
# arm64-5.10 (Debian 11), x86-6.1 (Debian 12 amd64 with AMD SVM under TCG); CI
# runs ALL_HOSTS (x86-6.1 not yet: README.md). Without HOST: $KVMEXIT_E2E_HOSTS (comma-separated),
# else ALL_HOSTS; `run` without HOST boots arm64-6.1.
# Cache: ${KVMEXIT_ARM64_CACHE:-/var/cache/kvmexit-arm64}; images are keyed by
# a hash of their inputs, so a warm run rebuilds nothing.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
cache=${KVMEXIT_ARM64_CACHE:-/var/cache/kvmexit-arm64}
boot_timeout=${KVMEXIT_ARM64_BOOT_TIMEOUT:-2700}

log() { echo "e2e-harness: $*" >&2; }

ALL_HOSTS="arm64-6.1 arm64-5.10 x86-6.1"

# One kernel/userland pair: Debian architecture, suite and kernel series;
# the modules the initramfs loads; extra rootfs packages (QEMU_PKG: Debian's QEMU,
# for the `qemu` scenario); SCENARIO_CONF: settings
# of scenario.conf this host overrides (arm64-5.10 measures the
# cost scenario with fewer repetitions, for CI's time; x86 skips it: scenario-x86.conf).
host_conf() {
    HOST=$1
    case "$HOST" in
        arm64-6.1) ARCH=arm64 SUITE=bookworm KSERIES=6.1.0 QEMU_PKG=qemu-system-arm SCENARIO_CONF="" ;;
        arm64-5.10) ARCH=arm64 SUITE=bullseye KSERIES=5.10.0 QEMU_PKG=qemu-system-arm SCENARIO_CONF="COST_ROUNDS=2" ;;
        x86-6.1) ARCH=amd64 SUITE=bookworm KSERIES=6.1.0 QEMU_PKG=qemu-system-x86 SCENARIO_CONF="" ;;
        *) log "unknown host $HOST (known: $ALL_HOSTS)"; exit 2 ;;
    esac
    case "$ARCH" in
        arm64)
            MODULES="virtio_mmio virtio_blk crc32c_generic ext4"
            EXTRA_PKGS="$QEMU_PKG"
            ;;
        amd64)
            MODULES="virtio_pci virtio_blk crc32c_generic ext4 kvm kvm_amd"
            EXTRA_PKGS="linux-perf $QEMU_PKG"
            ;;
    esac
    MIRRORS=(
        "deb http://deb.debian.org/debian $SUITE main"
        "deb http://deb.debian.org/debian $SUITE-updates main"
    )
    # bullseye-security's lists are served here but its pool is not (404), so
    # bullseye comes from its last point release (kernel 5.10.0-32, 5.10.223).
    [ "$SUITE" = bullseye ] || MIRRORS+=("deb http://deb.debian.org/debian-security $SUITE-security main")
}

selected_hosts() {
    if [ $# -gt 0 ]; then echo "$*"; return; fi
    echo "${KVMEXIT_E2E_HOSTS:-$ALL_HOSTS}" | tr ',' ' '
}

# A private apt state for the host's suite and architecture (APT_CONFIG), so
# this machine can pick and fetch another suite's kernel without touching its
# own sources. $1 = "update" forces a refresh of the lists.
apt_private() {
    local d="$cache/apt/$SUITE-$ARCH"
    mkdir -p "$d/lists/partial" "$d/cache/archives/partial" "$d/sources.list.d"
    printf '%s\n' "${MIRRORS[@]}" > "$d/sources.list"
    {
        echo "Dir::State::Lists \"$d/lists\";"
        echo "Dir::State::status \"/dev/null\";"
        echo "Dir::Cache \"$d/cache\";"
        echo "Dir::Etc::SourceList \"$d/sources.list\";"
        echo "Dir::Etc::SourceParts \"$d/sources.list.d\";"
        echo "APT::Architecture \"$ARCH\";"
        echo "APT::Architectures { \"$ARCH\"; };"
        echo "Acquire::Retries \"3\";"
    } > "$d/apt.conf"
    export APT_CONFIG="$d/apt.conf"
    if [ "${1:-}" = update ] || ! ls "$d/lists" | grep -q '_Packages$'; then
        apt-get update -q >/dev/null
    fi
}

cmd_deps() {
    local need=() host arches=" "
    for host in $(selected_hosts "$@"); do
        host_conf "$host"
        arches="$arches$ARCH "
    done
    command -v mmdebstrap >/dev/null || need+=(mmdebstrap)
    /usr/bin/python3 -c 'import prometheus_client, decorator' 2>/dev/null || need+=(python3-prometheus-client)
    command -v mke2fs >/dev/null || need+=(e2fsprogs)
    command -v debugfs >/dev/null || need+=(e2fsprogs)
    command -v cpio >/dev/null || need+=(cpio)
    command -v modinfo >/dev/null || need+=(kmod)
    command -v timeout >/dev/null || need+=(coreutils)
    case "$arches" in *" amd64 "*)
        command -v qemu-system-x86_64 >/dev/null || need+=(qemu-system-x86)
        command -v gcc >/dev/null || need+=(gcc libc6-dev)
        ;;
    esac
    case "$arches" in *" arm64 "*)
        command -v qemu-system-aarch64 >/dev/null || need+=(qemu-system-arm)
        [ -e /usr/libexec/qemu-binfmt/aarch64-binfmt-P ] || [ -e /usr/bin/qemu-aarch64-static ] \
            || need+=(qemu-user-static)
        command -v update-binfmts >/dev/null || need+=(binfmt-support)
        command -v arch-test >/dev/null || need+=(arch-test)
        command -v aarch64-linux-gnu-gcc >/dev/null || need+=(gcc-aarch64-linux-gnu libc6-dev-arm64-cross)
        ;;
    esac
    if [ ${#need[@]} -gt 0 ]; then
        log "installing host packages: ${need[*]}"
        apt-get update -q >/dev/null
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${need[@]}" >/dev/null
    fi
    case "$arches" in *" arm64 "*)
        # qemu-user binfmt for mmdebstrap's arm64 maintainer scripts
        if [ ! -e /proc/sys/fs/binfmt_misc/register ]; then
            mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc || true
        fi
        if [ ! -e /proc/sys/fs/binfmt_misc/qemu-aarch64 ]; then
            update-binfmts --enable qemu-aarch64 || true
        fi
        [ -e /proc/sys/fs/binfmt_misc/qemu-aarch64 ] || { log "qemu-aarch64 binfmt not registered"; exit 1; }
        ;;
    esac
}

# Pick the Debian kernel ABI N of the host's series and architecture whose
# linux-image and linux-headers candidates have the same version (newest
# first). KVMEXIT_E2E_ABI_<host with - and . as _> (KVMEXIT_ARM64_ABI for
# arm64-6.1) overrides. Prints "N VERSION".
pick_abi() {
    local var list n vi vh re
    var="KVMEXIT_E2E_ABI_$(echo "$HOST" | tr -- '-.' '__')"
    [ "$HOST" = arm64-6.1 ] && [ -n "${KVMEXIT_ARM64_ABI:-}" ] && var=KVMEXIT_ARM64_ABI
    re="^linux-headers-${KSERIES//./\\.}-\([0-9]*\)-$ARCH "
    list=$(apt-cache search --names-only "^linux-headers-${KSERIES//./\\.}-[0-9]+-$ARCH\$" \
        | sed -n "s/$re.*/\1/p" | sort -rn)
    [ -n "${!var:-}" ] && list=${!var}
    for n in $list; do
        vi=$(apt-cache policy "linux-image-$KSERIES-$n-$ARCH" | sed -n 's/^ *Candidate: //p')
        vh=$(apt-cache policy "linux-headers-$KSERIES-$n-$ARCH" | sed -n 's/^ *Candidate: //p')
        if [ -n "$vi" ] && [ "$vi" != "(none)" ] && [ "$vi" = "$vh" ]; then
            echo "$n $vi"
            return
        fi
    done
    log "no matching linux-image/linux-headers $KSERIES $ARCH pair in $SUITE"
    exit 1
}

env_file() { echo "$cache/current-$1.env"; }

build_host() {
    local updated=${1:-} abi_ver abi kver_pkg kver kkey rkey kdir rimg inputs
    apt_private $updated
    abi_ver=$(pick_abi)
    abi=${abi_ver%% *}
    kver_pkg=${abi_ver#* }
    kver="$KSERIES-$abi-$ARCH"
    inputs="host=$HOST arch=$ARCH suite=$SUITE kver=$kver pkg=$kver_pkg"
    kkey=$( { echo "$inputs modules=$MODULES"; cat "$here/build-kernel.sh"; } | sha256sum | cut -c1-16)
    rkey=$( { echo "$inputs extra=$EXTRA_PKGS ${MIRRORS[*]}"; cat "$here/build-rootfs.sh" "$here/packages.txt"; } \
        | sha256sum | cut -c1-16)
    kdir="$cache/kernel-$HOST-$abi-$kkey"
    rimg="$cache/rootfs-$HOST-$abi-$rkey.img"
    if [ -z "$updated" ] && { [ ! -e "$kdir/vmlinuz" ] || [ ! -e "$rimg" ]; }; then
        # Something must be built: refresh the package lists first (stale lists
        # name kernel versions the mirror may no longer have), then decide again.
        log "$HOST: cache miss: apt-get update, then pick the kernel again"
        build_host update
        return
    fi
    if [ -e "$kdir/vmlinuz" ]; then
        log "$HOST: kernel cached: $kdir"
    else
        log "$HOST: building kernel/initramfs -> $kdir"
        rm -rf "$kdir"
        bash "$here/build-kernel.sh" "$kdir" "$kver" "$MODULES"
    fi
    if [ -e "$rimg" ]; then
        log "$HOST: rootfs cached: $rimg"
    else
        log "$HOST: building rootfs (mmdebstrap, several minutes) -> $rimg"
        local blog="$cache/logs/rootfs-build-$HOST.log"
        bash "$here/build-rootfs.sh" "$rimg" "$kver" "$SUITE" "$EXTRA_PKGS" "${MIRRORS[@]}" > "$blog" 2>&1 || {
            log "rootfs build failed, log: $blog"; tail -n 30 "$blog" >&2; exit 1; }
    fi
    local envf
    envf=$(env_file "$HOST")
    cat > "$envf.tmp" <<EOF
HOST=$HOST
ARCH=$ARCH
SUITE=$SUITE
ABI=$abi
KPKG=$kver_pkg
KVER=$(cat "$kdir/kver")
KERNEL=$kdir/vmlinuz
INITRD=$kdir/initrd.gz
ROOTFS=$rimg
EOF
    mv "$envf.tmp" "$envf"
    log "$HOST: build ready: $envf"
}

cmd_build() {
    mkdir -p "$cache" "$cache/logs"
    local host
    for host in $(selected_hosts "$@"); do
        host_conf "$host"
        (build_host)
    done
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
    local out=$1 host=${2:-arm64-6.1} envf
    host_conf "$host"
    envf=$(env_file "$host")
    [ -e "$envf" ] || { log "no $envf: run '$0 build $host' first"; exit 2; }
    # shellcheck disable=SC1090
    . "$envf"
    for f in "$KERNEL" "$INITRD" "$ROOTFS"; do
        [ -e "$f" ] || { log "missing cached image $f: run '$0 build $host'"; exit 2; }
    done
    mkdir -p "$out" "$cache/logs"
    # global: the EXIT trap runs after this function returns
    stage=$(mktemp -d /tmp/kvmexit-e2e-run.XXXXXX)
    trap 'cleanup_qemu; rm -rf "$stage"' EXIT
    trap 'cleanup_qemu; exit 130' INT TERM

    # The code under test and the guest scripts go on a fresh work disk.
    mkdir -p "$stage/work/guest" "$stage/work/py" "$stage/work/results"
    cp -a "$here/guest/." "$stage/work/guest/"
    # The cost scenario attaches the original tool's logic too (the benchmarks' faithful baseline).
    cp "$repo/bench/original_kvmexit_aarch64.bpf.c" "$stage/work/guest/"
    # KVMEXIT_ARM64_SRC: test another kvmexit package directory (default: this tree's)
    local src=${KVMEXIT_ARM64_SRC:-$repo/src/kvmexit}
    if [ -d "$src" ]; then
        cp -a "$src" "$stage/work/py/kvmexit"
        find "$stage/work/py" -name __pycache__ -prune -exec rm -rf {} +
    fi
    # The exporter scenario's prometheus_client: this machine's copy (pure Python; Debian's
    # python3-prometheus-client, which imports python3-decorator's decorator.py), on the work
    # disk rather than in the image (no rootfs rebuild).
    local promc
    promc=$(/usr/bin/python3 -c 'import os, prometheus_client, decorator
print(os.path.dirname(prometheus_client.__file__), decorator.__file__)' 2>/dev/null || true)
    if [ -n "$promc" ]; then
        cp -a "${promc% *}" "$stage/work/py/prometheus_client"
        cp "${promc#* }" "$stage/work/py/"
        find "$stage/work/py/prometheus_client" -name __pycache__ -prune -exec rm -rf {} +
    else
        log "no prometheus_client on this machine (apt-get install python3-prometheus-client): the exporter scenario will fail"
    fi
    case "$ARCH" in
        arm64)
            aarch64-linux-gnu-gcc -O2 -static -pthread -Wall -Werror -o "$stage/work/guest/e2evmm" "$here/vmm/e2evmm.c"
            cp "$here/scenario.conf" "$stage/work/guest/scenario.conf"
            ;;
        amd64)
            gcc -O2 -static -pthread -Wall -Werror -o "$stage/work/guest/e2evmm" "$here/vmm/e2evmm_x86.c"
            cp "$here/scenario-x86.conf" "$stage/work/guest/scenario.conf"
            ;;
    esac
    # shellcheck disable=SC2086
    [ -z "$SCENARIO_CONF" ] || printf '%s\n' $SCENARIO_CONF >> "$stage/work/guest/scenario.conf"
    # The `qemu` scenario's guest: this host's own kernel and an initramfs whose init powers off.
    local cc=gcc
    [ "$ARCH" = arm64 ] && cc=aarch64-linux-gnu-gcc
    mkdir -p "$stage/nested/dev"
    $cc -O2 -static -Wall -Werror -o "$stage/nested/init" "$here/vmm/nested_init.c"
    (cd "$stage/nested" && printf 'dev\ninit\n' | cpio -o -H newc --quiet -R 0:0) | gzip -1 > "$stage/work/guest/nested-initrd.gz"
    cp "$KERNEL" "$stage/work/guest/nested-vmlinuz"
    env | grep '^KVMEXIT_E2E_' > "$stage/work/guest/env.conf" || true
    { echo "KVER=$KVER"; echo "HOST=$HOST"; echo "ARCH=$ARCH"; } >> "$stage/work/guest/env.conf"
    mke2fs -q -t ext4 -L e2ework -d "$stage/work" "$stage/work.img" 256M

    # One emulated host at a time on this machine: two TCG guests on a small machine each run at a
    # fraction of the speed and can hit the time limits.
    exec 9>"${KVMEXIT_E2E_LOCK:-/tmp/kvmexit-emulated-host.lock}"
    flock -n 9 || { log "waiting for another emulated host on this machine to finish"; flock 9; }

    local serial="$out/serial.log"
    echo "$HOST" > "$out/host"
    log "booting emulated $HOST host (kernel $KVER), serial log: $serial"
    local t0 t1 load_start
    load_start=$(cat /proc/loadavg)
    t0=$(date +%s)
    case "$ARCH" in
        arm64)
            qemu-system-aarch64 -M virt,virtualization=on,gic-version=3 -cpu max,pauth-impdef=on \
                -smp 2 -m 2048 -nographic -no-reboot -nic none -monitor none -serial "file:$serial" \
                -kernel "$KERNEL" -initrd "$INITRD" \
                -append "console=ttyAMA0 panic=-1 loglevel=4 rw" \
                -drive "if=none,id=root,file=$ROOTFS,format=raw,snapshot=on" -device virtio-blk-device,drive=root \
                -drive "if=none,id=work,file=$stage/work.img,format=raw" -device virtio-blk-device,drive=work \
                </dev/null >"$out/qemu.stdout" 2>&1 &
            ;;
        amd64)
            # TCG's -cpu max has AMD SVM with nested paging: kvm_amd loads in the guest.
            # KVMEXIT_E2E_X86_{ACCEL,CPU,SMP,APPEND,MONITOR}: harness development (README.md: "The
            # emulated x86 host's panic and hangs"); the defaults are what CI runs. One CPU: QEMU
            # 7.2's multi-threaded TCG hung (stress round 12) and panicked (round 46) this nested
            # SVM host with kvmexit never loaded; with one CPU no hang or panic was seen.
            qemu-system-x86_64 -M q35 -accel "${KVMEXIT_E2E_X86_ACCEL:-tcg}" -cpu "${KVMEXIT_E2E_X86_CPU:-max}" \
                -smp "${KVMEXIT_E2E_X86_SMP:-1}" -m 2048 -nographic -no-reboot -nic none \
                -monitor "${KVMEXIT_E2E_X86_MONITOR:-none}" -serial "file:$serial" \
                -kernel "$KERNEL" -initrd "$INITRD" \
                -append "console=ttyS0 panic=-1 loglevel=4 rw ${KVMEXIT_E2E_X86_APPEND:-}" \
                -drive "if=none,id=root,file=$ROOTFS,format=raw,snapshot=on" -device virtio-blk-pci,drive=root \
                -drive "if=none,id=work,file=$stage/work.img,format=raw" -device virtio-blk-pci,drive=work \
                </dev/null >"$out/qemu.stdout" 2>&1 &
            ;;
    esac
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
    log "emulated $HOST host finished after $((t1 - t0))s"

    rm -rf "$out/results"
    # debugfs reads the file system as it is on disk: replay its journal first (the guest cannot
    # unmount it, only remount it read-only; a run once lacked the last scenario's vmm.out).
    e2fsck -p "$stage/work.img" >/dev/null 2>&1 || true
    debugfs -R "rdump /results $out" "$stage/work.img" >/dev/null 2>&1 || true
    # This machine's load while the emulated host ran (its speed, and so every timing, depends on it).
    if [ -d "$out/results" ]; then
        echo "$load_start" > "$out/results/host_loadavg_start"
        cat /proc/loadavg > "$out/results/host_loadavg_end"
        nproc > "$out/results/host_cpus"
    fi
    local keep
    keep="$cache/logs/serial-$HOST-$(date +%Y%m%d-%H%M%S).log"
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
    deps) shift; cmd_deps "$@" ;;
    build) shift; cmd_build "$@" ;;
    run) shift; cmd_run "${1:?usage: harness.sh run OUTDIR [HOST]}" "${2:-}" ;;
    hosts) selected_hosts | tr ' ' '\n' ;;
    all) shift || true; cmd_all "$@" ;;
    *) echo "usage: $0 [deps [HOST...]|build [HOST...]|run OUTDIR [HOST]|hosts|all [pytest args]]" >&2; exit 2 ;;
esac
