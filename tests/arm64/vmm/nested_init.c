/*
 * nested_init: PID 1 of the tiny initramfs the `qemu` scenario boots in QEMU inside the emulated
 * host (Debian's own kernel as the guest's). It prints one line to the console, so the host side
 * can see that the guest kernel reached user space, and powers the guest off (arm64: PSCI
 * SYSTEM_OFF; x86: ACPI S5), which ends QEMU.
 *
 * Built static for the host's architecture by harness.sh; no libc beyond what -static brings.
 */
#include <fcntl.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/reboot.h>
#include <unistd.h>

#define MARKER "KVMEXIT-NESTED-INIT: powering off\n"

int main(void)
{
    int fd;

    /* The initramfs has no device nodes: the kernel's own devtmpfs has the console. */
    mount("devtmpfs", "/dev", "devtmpfs", 0, NULL);
    fd = open("/dev/console", O_WRONLY);
    if (fd >= 0) {
        ssize_t n = write(fd, MARKER, strlen(MARKER));
        (void)n; /* nowhere to report a failed write; the host side sees the marker missing */
        close(fd);
    }
    sync();
    reboot(RB_POWER_OFF);
    /* Not reached: without a power-off method the kernel halts instead of returning. */
    return 1;
}
