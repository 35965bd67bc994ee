#!/bin/sh
# PID 1 of the emulated arm64 host (after the initramfs switch_root).
# Runs the scenarios from the work disk, then powers off.
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
mkdir -p /dev/pts /dev/shm /run /tmp
mount -t devpts devpts /dev/pts
mount -t tmpfs tmpfs /run
mount -t tmpfs tmpfs /tmp
mount -t tracefs tracefs /sys/kernel/tracing
mount -t debugfs debugfs /sys/kernel/debug
mount -t bpf bpf /sys/fs/bpf 2>/dev/null
hostname e2e-host
echo "E2E: guest up $(uname -r)"
cd /mnt/work/guest
timeout 2400 python3 /mnt/work/guest/scenarios.py
echo "E2E: scenarios exited rc=$?"
sync
# umount fails ("target is busy": this script is read from the disk and runs in it); the read-only remount then
# writes the journal back, and the host replays it anyway before it reads the disk (harness.sh).
umount /mnt/work 2>/dev/null || mount -o remount,ro /mnt/work
sync
echo "E2E: poweroff"
echo o > /proc/sysrq-trigger
sleep 30
