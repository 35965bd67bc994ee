/*
 * e2evmm_x86: a tiny x86 KVM VMM producing a known number of VM exits per vCPU.
 *
 * Usage: e2evmm_x86 [-name guest=NAME,...] OUT:MMIO:CPUID:HLT[:MSR] [...]
 *
 * The x86 twin of e2evmm.c. One VM with an in-kernel irqchip (so HLT blocks in
 * the kernel and kvm_vcpu_wakeup fires), one vCPU thread per spec, thread i
 * named "CPU i/KVM" (like QEMU with debug-threads=on). vCPU i runs this
 * real-mode code from its own memslot (so each vCPU takes its own first
 * nested page fault on its code page):
 *
 *   OUT   x  out dx, al           port 0x510: SVM io, KVM_EXIT_IO to this VMM
 *   MMIO  x  mov es:[0], al       GPA 0xe0000, no memslot: SVM npf, KVM_EXIT_MMIO
 *   MSR   x  rdmsr; wrmsr         MSR 0x8b (IA32_UCODE_REV): two SVM msr exits (read, write),
 *                                 handled in the kernel (a guest's write is ignored)
 *   HLT   x  hlt                  SVM hlt; the vCPU blocks in the kernel until
 *                                 this VMM kicks its thread with SIGUSR1
 *   CPUID x  xor eax,eax; cpuid   SVM cpuid, handled in the kernel
 *   then     out to port 0x511    the "done" doorbell: one more io exit, thread ends.
 *
 * Counters live in esi, edi (32 bits: the `abandon` scenario's long runs), bx (HLT) and the upper
 * half of ebx (MSR), bp (rdmsr clobbers eax and edx, so MSR runs after OUT; cpuid clobbers eax-edx,
 * so it runs last).
 * A count of zero skips its loop. Each thread prints one line:
 *   E2EVMM vcpu=I tid=T out=N mmio=M cpuid=K hlt=H msr=R io_exits=E mmio_exits=F kicks=S eintr=R run_ns=D
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
#define SLOT_SIZE 0x1000UL
#define SLOT_BASE 0x10000UL    /* vCPU i code at SLOT_BASE * (i + 1) */
#define MMIO_ADDR 0xe0000UL    /* no memslot here */
#define OUT_PORT 0x510
#define DONE_PORT 0x511
#define MSR_UCODE_REV 0x8b
#define KICK_FIRST_NS 2000000ULL  /* 2 ms */
#define KICK_MAX_NS 64000000ULL   /* 64 ms: a blocked HLT waits at most this long */

extern const unsigned char guest_code[], guest_code_end[];
__asm__(
    ".section .rodata\n"
    ".global guest_code\n"
    "guest_code:\n"
    ".code16\n"
    "    test %esi, %esi\n"
    "    jz 2f\n"
    "1:  out %al, %dx\n"
    "    dec %esi\n"
    "    jnz 1b\n"
    "2:  test %edi, %edi\n"
    "    jz 4f\n"
    "3:  mov %al, %es:0\n"
    "    dec %edi\n"
    "    jnz 3b\n"
    "4:  mov %ebx, %eax\n"
    "    shr $16, %eax\n"
    "    jz 41f\n"
    "    mov $0x8b, %ecx\n"
    "40: rdmsr\n"
    "    wrmsr\n"
    "    sub $0x10000, %ebx\n"
    "    test $0xffff0000, %ebx\n"
    "    jnz 40b\n"
    "41: test %bx, %bx\n"
    "    jz 6f\n"
    "5:  hlt\n"
    "    dec %bx\n"
    "    jnz 5b\n"
    "6:  test %bp, %bp\n"
    "    jz 8f\n"
    "7:  xor %eax, %eax\n"
    "    cpuid\n"
    "    dec %bp\n"
    "    jnz 7b\n"
    "8:  mov $0x511, %dx\n"
    "    out %al, %dx\n"
    "9:  jmp 9b\n"
    ".code64\n"
    ".global guest_code_end\n"
    "guest_code_end:\n"
    ".text\n");

struct vcpu {
    int idx;
    int fd;
    struct kvm_run *run;
    pthread_t thread;
    unsigned long counts[5];  /* out mmio cpuid hlt msr */
    volatile int in_run;
    volatile uint64_t run_since;
    volatile int finished;
    /* Kick after this long in KVM_RUN: doubled each time a kick finds the guest not halted. */
    volatile uint64_t kick_after_ns;
    unsigned long io_exits, mmio_exits, kicks, eintr;
    uint64_t run_ns;
    pid_t tid;
};

static int vm_fd;
static long run_size;
static struct vcpu vcpus[MAX_VCPUS];

static void die(const char *what)
{
    fprintf(stderr, "e2evmm_x86: %s: %s\n", what, strerror(errno));
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

static void set_runnable(struct vcpu *v)
{
    struct kvm_mp_state mp = {.mp_state = KVM_MP_STATE_RUNNABLE};
    if (ioctl(v->fd, KVM_SET_MP_STATE, &mp) < 0)
        die("KVM_SET_MP_STATE");
}

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
                struct kvm_mp_state mp;
                v->eintr++;
                /* Kicked out of a blocked HLT: the vCPU stays halted until an
                 * interrupt, and there is none, so resume it after the hlt. */
                if (ioctl(v->fd, KVM_GET_MP_STATE, &mp) < 0)
                    die("KVM_GET_MP_STATE");
                if (mp.mp_state == KVM_MP_STATE_HALTED)
                    set_runnable(v);
                else if (v->kick_after_ns < KICK_MAX_NS)
                    /* The guest was running: under the heavy tracing of the slow scenario on
                     * the one-CPU emulated host, kicks every 2 ms landed mostly there and left
                     * the guest little time (VMM wall 42 s to over 300 s, for 0.3 s untraced).
                     * Kick less often. */
                    v->kick_after_ns *= 2;
                continue;
            }
            die("KVM_RUN");
        }
        if (v->run->exit_reason == KVM_EXIT_IO && v->run->io.direction == KVM_EXIT_IO_OUT) {
            if (v->run->io.port == DONE_PORT)
                break;
            if (v->run->io.port != OUT_PORT) {
                fprintf(stderr, "e2evmm_x86: unexpected out to port %x\n", v->run->io.port);
                exit(1);
            }
            v->io_exits++;
            continue;
        }
        if (v->run->exit_reason == KVM_EXIT_MMIO) {
            if (v->run->mmio.phys_addr != MMIO_ADDR || !v->run->mmio.is_write) {
                fprintf(stderr, "e2evmm_x86: unexpected mmio %llx\n",
                        (unsigned long long)v->run->mmio.phys_addr);
                exit(1);
            }
            v->mmio_exits++;
            continue;
        }
        if (v->run->exit_reason == KVM_EXIT_INTR)
            continue;
        fprintf(stderr, "e2evmm_x86: vcpu %d unexpected exit reason %u\n", v->idx,
                v->run->exit_reason);
        exit(1);
    }
    v->run_ns = now_ns() - t0;
    v->finished = 1;
    return NULL;
}

static void set_segment(struct kvm_segment *s, uint64_t base)
{
    s->base = base;
    s->selector = (uint16_t)(base >> 4);
    s->limit = 0xffff;
}

static void setup_vcpu(struct vcpu *v)
{
    v->kick_after_ns = KICK_FIRST_NS;
    uint64_t gpa = SLOT_BASE * (uint64_t)(v->idx + 1);
    void *mem;
    struct kvm_userspace_memory_region region;
    struct kvm_sregs sregs;
    struct kvm_regs regs;

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
    v->run = mmap(NULL, (size_t)run_size, PROT_READ | PROT_WRITE, MAP_SHARED, v->fd, 0);
    if (v->run == MAP_FAILED)
        die("mmap kvm_run");
    if (ioctl(v->fd, KVM_GET_SREGS, &sregs) < 0)
        die("KVM_GET_SREGS");
    set_segment(&sregs.cs, gpa);
    set_segment(&sregs.es, MMIO_ADDR);
    if (ioctl(v->fd, KVM_SET_SREGS, &sregs) < 0)
        die("KVM_SET_SREGS");
    memset(&regs, 0, sizeof(regs));
    regs.rflags = 2;
    regs.rip = 0;
    regs.rsi = v->counts[0];
    regs.rdi = v->counts[1];
    regs.rbp = v->counts[2];
    regs.rbx = v->counts[4] << 16 | v->counts[3];
    regs.rdx = OUT_PORT;
    if (ioctl(v->fd, KVM_SET_REGS, &regs) < 0)
        die("KVM_SET_REGS");
    /* With an in-kernel LAPIC, application processors wait for INIT/SIPI. */
    set_runnable(v);
}

int main(int argc, char **argv)
{
    int kvm, i, fields, end, n = 0;
    const char *name = "";
    struct sigaction sa;
    uint64_t t0;

    for (i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "-name") && i + 1 < argc) {
            name = argv[++i];
            continue;
        }
        if (n >= MAX_VCPUS) {
            fprintf(stderr, "e2evmm_x86: too many vCPUs\n");
            return 2;
        }
        end = 0;
        fields = sscanf(argv[i], "%lu:%lu:%lu:%lu%n:%lu%n", &vcpus[n].counts[0], &vcpus[n].counts[1],
                        &vcpus[n].counts[2], &vcpus[n].counts[3], &end, &vcpus[n].counts[4], &end);
        if (fields < 4 || argv[i][end] != '\0' || vcpus[n].counts[0] > 0xffffffffUL
            || vcpus[n].counts[1] > 0xffffffffUL || vcpus[n].counts[2] > 0xffff
            || vcpus[n].counts[3] > 0xffff || vcpus[n].counts[4] > 0xffff) {
            fprintf(stderr, "usage: e2evmm_x86 [-name NAME] OUT:MMIO:CPUID:HLT[:MSR] ... (OUT, MMIO <= 2^32-1; CPUID, HLT, MSR <= 65535)\n");
            return 2;
        }
        vcpus[n].idx = n;
        n++;
    }
    if (n == 0) {
        fprintf(stderr, "usage: e2evmm_x86 [-name NAME] OUT:MMIO:CPUID:HLT[:MSR] ...\n");
        return 2;
    }

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
    if (ioctl(vm_fd, KVM_CREATE_IRQCHIP, 0) < 0)
        die("KVM_CREATE_IRQCHIP");
    for (i = 0; i < n; i++)
        setup_vcpu(&vcpus[i]);

    fprintf(stderr, "e2evmm_x86: %s: %d vCPUs ready\n", name, n);
    t0 = now_ns();
    for (i = 0; i < n; i++)
        if (pthread_create(&vcpus[i].thread, NULL, vcpu_thread, &vcpus[i]))
            die("pthread_create");

    /* Kick any vCPU thread that has been inside KVM_RUN for over 2 ms (more
     * once kicks have found its guest running): most likely it is blocked in
     * HLT, and the signal wakes it (KVM_RUN returns EINTR). A kick that lands
     * while the guest runs costs one more exit, which ftrace and kvmexit both
     * see. */
    for (;;) {
        int alive = 0;
        struct timespec d = {0, 500000};
        for (i = 0; i < n; i++) {
            struct vcpu *v = &vcpus[i];
            if (v->finished)
                continue;
            alive++;
            if (v->in_run && now_ns() - v->run_since > v->kick_after_ns) {
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
        printf("E2EVMM vcpu=%d tid=%d out=%lu mmio=%lu cpuid=%lu hlt=%lu msr=%lu io_exits=%lu "
               "mmio_exits=%lu kicks=%lu eintr=%lu run_ns=%llu\n",
               v->idx, (int)v->tid, v->counts[0], v->counts[1], v->counts[2], v->counts[3],
               v->counts[4], v->io_exits, v->mmio_exits, v->kicks, v->eintr, (unsigned long long)v->run_ns);
    }
    printf("E2EVMM done pid=%d wall_ns=%llu\n", (int)getpid(),
           (unsigned long long)(now_ns() - t0));
    fflush(stdout);
    return 0;
}
