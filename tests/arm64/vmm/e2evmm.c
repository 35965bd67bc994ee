/*
 * e2evmm: a tiny arm64 KVM VMM producing a known number of VM exits per vCPU.
 *
 * Usage: e2evmm [-name guest=NAME,...] SPEC [SPEC ...]
 *        SPEC = MMIO:HVC:SYS:WFI[:CALLS:SYSRW:GIC:PAGES]
 *
 * One VM, one vCPU thread per MMIO:HVC:SYS:WFI spec, thread i named "CPU i/KVM"
 * (like QEMU with debug-threads=on).  vCPU i runs this guest code from its own
 * memslot (so each vCPU takes its own first instruction-fetch stage-2 fault):
 *
 *   MMIO x  str w20, [x24]         store to a GPA without memslot: TRAP DABT_LOW,
 *                                  KVM_EXIT_MMIO to this VMM
 *   HVC  x  mov x0, #0; hvc #0     SMCCC call 0 (unknown, handled in kernel):
 *                                  TRAP HVC64
 *   SYS  x  mrs x1, id_aa64pfr0_el1  (HCR_EL2.TID3): TRAP SYS64
 *   WFI  x  wfi                    TRAP WFx, the vCPU blocks until this VMM
 *                                  kicks its thread with SIGUSR1
 *   CALLS x  8 hvc #0 with known SMCCC function ids, all handled in the
 *            kernel: PSCI_VERSION, PSCI_FEATURES, PSCI_AFFINITY_INFO64,
 *            SMCCC_VERSION, SMCCC_ARCH_FEATURES, KVM_FEATURES, TRNG_VERSION
 *            and 0x8400ffff (no such function): 8 TRAP HVC64
 *   SYSRW x  msr oslar_el1, xzr; mrs x4, oslsr_el1  (MDCR_EL2.TDOSA):
 *            a write and a read, 2 TRAP SYS64
 *   GIC x    ldr w4, [GICD_TYPER]; ldr x4, [GICR_TYPER]: MMIO to the
 *            in-kernel vGICv3 (created only when some vCPU has GIC > 0),
 *            2 TRAP DABT_LOW handled in the kernel
 *   PAGES x  str w20 to the next page of a fresh memslot of PAGES host
 *            pages: first touch, 1 TRAP DABT_LOW (stage-2 fault) each
 *   then    str w20, [x25]         store to the "done" doorbell GPA: one more
 *                                  TRAP DABT_LOW / KVM_EXIT_MMIO, thread ends.
 *
 * Loop counters live in x20-x23 and x26-x28, x16 (KVM's SMCCC handler
 * clobbers x0-x3).  A count of zero skips its loop.  Each thread prints:
 *   E2EVMM vcpu=I tid=T mmio=N hvc=M sys=K wfi=W calls=C sysrw=R gic=G pages=P
 *          page_size=Z mmio_exits=E kicks=S eintr=R run_ns=D
 * and the process finally prints  E2EVMM done pid=P wall_ns=D
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/kvm.h>
#include <pthread.h>
#include <signal.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#define MAX_VCPUS 8
#define SLOT_SIZE 0x10000UL
#define SLOT_BASE 0x40000000UL   /* vCPU i code at SLOT_BASE + i * 0x1000000 */
#define MMIO_ADDR 0x09000000UL   /* no memslot here */
#define DONE_ADDR 0x09001000UL   /* no memslot here either */
#define DATA_BASE 0x50000000UL   /* vCPU i fresh pages at DATA_BASE + i * 0x1000000 */
#define GICD_BASE 0x08000000UL   /* vGICv3 distributor (64K) */
#define GICR_BASE 0x080A0000UL   /* vGICv3 redistributors, 128K per vCPU */
#define NCOUNTS 8

extern const unsigned char guest_code[], guest_code_end[];
__asm__(
    ".section .rodata\n"
    ".balign 4\n"
    ".global guest_code\n"
    "guest_code:\n"
    "    cbz x20, 2f\n"
    "1:  str w20, [x24]\n"
    "    sub x20, x20, #1\n"
    "    cbnz x20, 1b\n"
    "2:  cbz x21, 4f\n"
    "3:  mov x0, #0\n"
    "    hvc #0\n"
    "    sub x21, x21, #1\n"
    "    cbnz x21, 3b\n"
    "4:  cbz x22, 6f\n"
    "5:  mrs x1, id_aa64pfr0_el1\n"
    "    sub x22, x22, #1\n"
    "    cbnz x22, 5b\n"
    "6:  cbz x23, 8f\n"
    "7:  wfi\n"
    "    sub x23, x23, #1\n"
    "    cbnz x23, 7b\n"
    "8:  cbz x26, 10f\n"
    "9:  movz x0, #0x0000\n"
    "    movk x0, #0x8400, lsl #16\n"   /* PSCI_VERSION */
    "    hvc #0\n"
    "    movz x0, #0x000a\n"
    "    movk x0, #0x8400, lsl #16\n"   /* PSCI_FEATURES */
    "    movz x1, #0x0000\n"
    "    movk x1, #0x8400, lsl #16\n"   /*   (PSCI_VERSION) */
    "    hvc #0\n"
    "    movz x0, #0x0004\n"
    "    movk x0, #0xc400, lsl #16\n"   /* PSCI_AFFINITY_INFO64 */
    "    mov x1, #0\n"
    "    mov x2, #0\n"
    "    hvc #0\n"
    "    movz x0, #0x0000\n"
    "    movk x0, #0x8000, lsl #16\n"   /* SMCCC_VERSION */
    "    hvc #0\n"
    "    movz x0, #0x0001\n"
    "    movk x0, #0x8000, lsl #16\n"   /* SMCCC_ARCH_FEATURES */
    "    movz x1, #0x8000\n"
    "    movk x1, #0x8000, lsl #16\n"   /*   (ARCH_WORKAROUND_1) */
    "    hvc #0\n"
    "    movz x0, #0x0000\n"
    "    movk x0, #0x8600, lsl #16\n"   /* KVM_FEATURES */
    "    hvc #0\n"
    "    movz x0, #0x0050\n"
    "    movk x0, #0x8400, lsl #16\n"   /* TRNG_VERSION */
    "    hvc #0\n"
    "    movz x0, #0xffff\n"
    "    movk x0, #0x8400, lsl #16\n"   /* no such function */
    "    hvc #0\n"
    "    sub x26, x26, #1\n"
    "    cbnz x26, 9b\n"
    "10: cbz x27, 12f\n"
    "11: msr oslar_el1, xzr\n"
    "    mrs x4, oslsr_el1\n"
    "    sub x27, x27, #1\n"
    "    cbnz x27, 11b\n"
    "12: cbz x28, 14f\n"
    "13: ldr w4, [x15, #4]\n"           /* GICD_TYPER */
    "    ldr x4, [x14, #8]\n"           /* GICR_TYPER */
    "    sub x28, x28, #1\n"
    "    cbnz x28, 13b\n"
    "14: cbz x16, 16f\n"
    "15: str w20, [x17]\n"
    "    add x17, x17, x13\n"
    "    sub x16, x16, #1\n"
    "    cbnz x16, 15b\n"
    "16: str w20, [x25]\n"
    "17: b 17b\n"
    ".global guest_code_end\n"
    "guest_code_end:\n"
    ".text\n");

struct vcpu {
    int idx;
    int fd;
    struct kvm_run *run;
    pthread_t thread;
    unsigned long counts[NCOUNTS];  /* mmio hvc sys wfi calls sysrw gic pages */
    volatile int in_run;
    volatile uint64_t run_since;
    volatile int finished;
    unsigned long mmio_exits, kicks, eintr;
    uint64_t run_ns;
    pid_t tid;
};

static int vm_fd;
static long run_size;
static struct kvm_vcpu_init vcpu_init;
static struct vcpu vcpus[MAX_VCPUS];
static long page_size;

static void die(const char *what)
{
    fprintf(stderr, "e2evmm: %s: %s\n", what, strerror(errno));
    exit(1);
}

static uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ULL + (uint64_t)ts.tv_nsec;
}

static void on_kick(int sig)
{
    (void)sig;
}

static void set_reg(int fd, uint64_t off, uint64_t val)
{
    struct kvm_one_reg reg;
    reg.id = KVM_REG_ARM64 | KVM_REG_SIZE_U64 | KVM_REG_ARM_CORE | (off / sizeof(uint32_t));
    reg.addr = (uint64_t)(uintptr_t)&val;
    if (ioctl(fd, KVM_SET_ONE_REG, &reg) < 0)
        die("KVM_SET_ONE_REG");
}

#define XREG(n) (offsetof(struct kvm_regs, regs.regs) + (n) * sizeof(uint64_t))

static void *vcpu_thread(void *arg)
{
    struct vcpu *v = arg;
    char name[16];
    uint64_t t0;

    snprintf(name, sizeof(name), "CPU %d/KVM", v->idx);
    prctl(PR_SET_NAME, name, 0, 0, 0);
    v->tid = (pid_t)syscall(SYS_gettid);
    t0 = now_ns();
    for (;;) {
        int r;
        v->run_since = now_ns();
        v->in_run = 1;
        r = ioctl(v->fd, KVM_RUN, 0);
        v->in_run = 0;
        if (r < 0) {
            if (errno == EINTR || errno == EAGAIN) {
                v->eintr++;
                continue;
            }
            die("KVM_RUN");
        }
        if (v->run->exit_reason == KVM_EXIT_MMIO) {
            if (v->run->mmio.phys_addr == DONE_ADDR)
                break;
            if (v->run->mmio.phys_addr != MMIO_ADDR || !v->run->mmio.is_write) {
                fprintf(stderr, "e2evmm: unexpected mmio %llx\n",
                        (unsigned long long)v->run->mmio.phys_addr);
                exit(1);
            }
            v->mmio_exits++;
            continue;
        }
        if (v->run->exit_reason == KVM_EXIT_INTR)
            continue;
        fprintf(stderr, "e2evmm: vcpu %d unexpected exit reason %u\n", v->idx,
                v->run->exit_reason);
        exit(1);
    }
    v->run_ns = now_ns() - t0;
    v->finished = 1;
    return NULL;
}

static void setup_vcpu(struct vcpu *v)
{
    uint64_t gpa = SLOT_BASE + (uint64_t)v->idx * 0x1000000UL;
    void *mem;
    struct kvm_userspace_memory_region region;

    mem = mmap(NULL, SLOT_SIZE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (mem == MAP_FAILED)
        die("mmap");
    memcpy(mem, guest_code, (size_t)(guest_code_end - guest_code));
    memset(&region, 0, sizeof(region));
    region.slot = (uint32_t)v->idx;
    region.guest_phys_addr = gpa;
    region.memory_size = SLOT_SIZE;
    region.userspace_addr = (uint64_t)(uintptr_t)mem;
    if (ioctl(vm_fd, KVM_SET_USER_MEMORY_REGION, &region) < 0)
        die("KVM_SET_USER_MEMORY_REGION");

    v->fd = ioctl(vm_fd, KVM_CREATE_VCPU, v->idx);
    if (v->fd < 0)
        die("KVM_CREATE_VCPU");
    if (ioctl(v->fd, KVM_ARM_VCPU_INIT, &vcpu_init) < 0)
        die("KVM_ARM_VCPU_INIT");
    v->run = mmap(NULL, (size_t)run_size, PROT_READ | PROT_WRITE, MAP_SHARED, v->fd, 0);
    if (v->run == MAP_FAILED)
        die("mmap kvm_run");
    set_reg(v->fd, offsetof(struct kvm_regs, regs.pc), gpa);
    set_reg(v->fd, XREG(20), v->counts[0]);
    set_reg(v->fd, XREG(21), v->counts[1]);
    set_reg(v->fd, XREG(22), v->counts[2]);
    set_reg(v->fd, XREG(23), v->counts[3]);
    set_reg(v->fd, XREG(24), MMIO_ADDR);
    set_reg(v->fd, XREG(25), DONE_ADDR);
    set_reg(v->fd, XREG(26), v->counts[4]);
    set_reg(v->fd, XREG(27), v->counts[5]);
    set_reg(v->fd, XREG(28), v->counts[6]);
    set_reg(v->fd, XREG(16), v->counts[7]);
    set_reg(v->fd, XREG(15), GICD_BASE);
    set_reg(v->fd, XREG(14), GICR_BASE + (uint64_t)v->idx * 0x20000UL);
    set_reg(v->fd, XREG(13), (uint64_t)page_size);
    if (v->counts[7]) {
        /* Fresh anonymous pages, never touched here: the guest's first
         * store to each is a stage-2 fault.  No THP, so one fault per page. */
        size_t len = v->counts[7] * (size_t)page_size;
        uint64_t dgpa = DATA_BASE + (uint64_t)v->idx * 0x1000000UL;
        void *data = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (data == MAP_FAILED)
            die("mmap data");
        madvise(data, len, MADV_NOHUGEPAGE);
        memset(&region, 0, sizeof(region));
        region.slot = (uint32_t)(MAX_VCPUS + v->idx);
        region.guest_phys_addr = dgpa;
        region.memory_size = len;
        region.userspace_addr = (uint64_t)(uintptr_t)data;
        if (ioctl(vm_fd, KVM_SET_USER_MEMORY_REGION, &region) < 0)
            die("KVM_SET_USER_MEMORY_REGION data");
        set_reg(v->fd, XREG(17), dgpa);
    }
}

static void set_vgic_attr(int fd, uint32_t group, uint64_t attr, void *addr)
{
    struct kvm_device_attr a;
    memset(&a, 0, sizeof(a));
    a.group = group;
    a.attr = attr;
    a.addr = (uint64_t)(uintptr_t)addr;
    if (ioctl(fd, KVM_SET_DEVICE_ATTR, &a) < 0)
        die("KVM_SET_DEVICE_ATTR vgic");
}

/* An in-kernel GICv3 (as QEMU's -M virt,gic-version=3 with KVM), after the
 * vCPUs exist, before they run. */
static void create_vgic(void)
{
    struct kvm_create_device dev;
    uint64_t dist = GICD_BASE, redist = GICR_BASE;

    memset(&dev, 0, sizeof(dev));
    dev.type = KVM_DEV_TYPE_ARM_VGIC_V3;
    if (ioctl(vm_fd, KVM_CREATE_DEVICE, &dev) < 0)
        die("KVM_CREATE_DEVICE vgic-v3");
    set_vgic_attr((int)dev.fd, KVM_DEV_ARM_VGIC_GRP_ADDR, KVM_VGIC_V3_ADDR_TYPE_DIST, &dist);
    set_vgic_attr((int)dev.fd, KVM_DEV_ARM_VGIC_GRP_ADDR, KVM_VGIC_V3_ADDR_TYPE_REDIST, &redist);
    set_vgic_attr((int)dev.fd, KVM_DEV_ARM_VGIC_GRP_CTRL, KVM_DEV_ARM_VGIC_CTRL_INIT, NULL);
}

int main(int argc, char **argv)
{
    int kvm, i, n = 0;
    const char *name = "";
    struct sigaction sa;
    uint64_t t0;

    for (i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "-name") && i + 1 < argc) {
            name = argv[++i];
            continue;
        }
        if (n >= MAX_VCPUS) {
            fprintf(stderr, "e2evmm: too many vCPUs\n");
            return 2;
        }
        {
            unsigned long *c = vcpus[n].counts;
            int got = sscanf(argv[i], "%lu:%lu:%lu:%lu:%lu:%lu:%lu:%lu", &c[0], &c[1], &c[2],
                             &c[3], &c[4], &c[5], &c[6], &c[7]);
            if (got != 4 && got != NCOUNTS) {
                fprintf(stderr, "usage: e2evmm [-name NAME] MMIO:HVC:SYS:WFI[:CALLS:SYSRW:GIC:PAGES] ...\n");
                return 2;
            }
        }
        vcpus[n].idx = n;
        n++;
    }
    if (n == 0) {
        fprintf(stderr, "usage: e2evmm [-name NAME] MMIO:HVC:SYS:WFI[:CALLS:SYSRW:GIC:PAGES] ...\n");
        return 2;
    }
    page_size = sysconf(_SC_PAGESIZE);

    memset(&sa, 0, sizeof(sa));
    sa.sa_handler = on_kick;  /* no SA_RESTART: KVM_RUN returns EINTR */
    sigaction(SIGUSR1, &sa, NULL);

    kvm = open("/dev/kvm", O_RDWR | O_CLOEXEC);
    if (kvm < 0)
        die("open /dev/kvm");
    vm_fd = ioctl(kvm, KVM_CREATE_VM, 0);
    if (vm_fd < 0)
        die("KVM_CREATE_VM");
    run_size = ioctl(kvm, KVM_GET_VCPU_MMAP_SIZE, 0);
    if (run_size <= 0)
        die("KVM_GET_VCPU_MMAP_SIZE");
    memset(&vcpu_init, 0, sizeof(vcpu_init));
    if (ioctl(vm_fd, KVM_ARM_PREFERRED_TARGET, &vcpu_init) < 0)
        die("KVM_ARM_PREFERRED_TARGET");
    vcpu_init.features[0] |= 1U << KVM_ARM_VCPU_PSCI_0_2;
    for (i = 0; i < n; i++)
        setup_vcpu(&vcpus[i]);
    for (i = 0; i < n; i++)
        if (vcpus[i].counts[6]) {
            create_vgic();
            break;
        }

    fprintf(stderr, "e2evmm: %s: %d vCPUs ready\n", name, n);
    t0 = now_ns();
    for (i = 0; i < n; i++)
        if (pthread_create(&vcpus[i].thread, NULL, vcpu_thread, &vcpus[i]))
            die("pthread_create");

    /* Kick any vCPU thread that has been inside KVM_RUN for over 2 ms: it is
     * blocked in a trapped WFI (nothing else here keeps it in the kernel that
     * long), and the signal wakes it (KVM_RUN returns EINTR).  */
    for (;;) {
        int alive = 0;
        struct timespec d = {0, 500000};
        for (i = 0; i < n; i++) {
            struct vcpu *v = &vcpus[i];
            if (v->finished)
                continue;
            alive++;
            if (v->in_run && now_ns() - v->run_since > 2000000ULL) {
                v->kicks++;
                pthread_kill(v->thread, SIGUSR1);
            }
        }
        if (!alive)
            break;
        nanosleep(&d, NULL);
    }
    for (i = 0; i < n; i++) {
        struct vcpu *v = &vcpus[i];
        pthread_join(v->thread, NULL);
        printf("E2EVMM vcpu=%d tid=%d mmio=%lu hvc=%lu sys=%lu wfi=%lu calls=%lu sysrw=%lu "
               "gic=%lu pages=%lu page_size=%ld mmio_exits=%lu kicks=%lu eintr=%lu run_ns=%llu\n",
               v->idx, (int)v->tid, v->counts[0], v->counts[1], v->counts[2], v->counts[3],
               v->counts[4], v->counts[5], v->counts[6], v->counts[7], page_size,
               v->mmio_exits, v->kicks, v->eintr, (unsigned long long)v->run_ns);
    }
    printf("E2EVMM done pid=%d wall_ns=%llu\n", (int)getpid(),
           (unsigned long long)(now_ns() - t0));
    fflush(stdout);
    return 0;
}
