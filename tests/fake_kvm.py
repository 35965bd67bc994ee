"""Stand-ins for a KVM host, so tests can drive kvmexit's real programs on a host whose guests
never fire kvm_exit: a tracefs tree with the upstream arm64 format files (kvmexit then builds the
arm64 programs and attaches them to the kvm raw tracepoints as usual), the program fds of a
running kvmexit process (BPF_PROG_GET_FD_BY_ID), and a fake VMM process whose vCPU threads send
exits and entries through BPF_PROG_TEST_RUN.

Run as a script, it is that VMM: ``fake_kvm.py EXIT_FD ENTRY_FD WAKEUP_FD PLAN_JSON -name guest=NAME``
sends the plan, prints ``done`` and waits for its standard input to close.
"""

from __future__ import annotations

import ctypes
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Dict, List, Sequence, Tuple

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bpf_testrun import _SYS_BPF, _libc, test_run_raw

__all__ = [
    "ARM64_FORMATS",
    "TRAP",
    "FakeVmm",
    "PlanItem",
    "program_ids_of",
    "prog_fds_of",
    "send_plan",
    "write_tracefs",
]

_COMMON = (
    "\tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;\n"
    "\tfield:unsigned char common_flags;\toffset:2;\tsize:1;\tsigned:0;\n"
    "\tfield:unsigned char common_preempt_count;\toffset:3;\tsize:1;\tsigned:0;\n"
    "\tfield:int common_pid;\toffset:4;\tsize:4;\tsigned:1;\n\n"
)


def _fmt(name: str, *fields: Tuple[str, int, int]) -> str:
    body = "".join("\tfield:%s;\toffset:%d;\tsize:%d;\tsigned:0;\n" % f for f in fields)
    return 'name: %s\nID: 1\nformat:\n%s%s\nprint fmt: ""\n' % (name, _COMMON, body)


#: Upstream arm64 (5.x/6.x): kvm_exit(ret, esr_ec, vcpu_pc), kvm_entry(vcpu_pc).
ARM64_FORMATS = {
    "kvm_exit": _fmt("kvm_exit", ("int ret", 8, 4), ("unsigned int esr_ec", 12, 4), ("unsigned long vcpu_pc", 16, 8)),
    "kvm_entry": _fmt("kvm_entry", ("unsigned long vcpu_pc", 8, 8)),
}
TRAP = 2  # ARM_EXCEPTION_TRAP


def write_tracefs(root: Path) -> Path:
    """A tracefs tree holding only the arm64 kvm format files (for ``--tracefs``)."""
    for event, text in ARM64_FORMATS.items():
        d = root / "events" / "kvm" / event
        d.mkdir(parents=True, exist_ok=True)
        (d / "format").write_text(text)
    return root


_BPF_PROG_GET_FD_BY_ID = 13


def program_ids_of(pid: int) -> Dict[int, str]:
    """{program id: name} of the BPF programs process ``pid`` holds open (from its fdinfo;
    this bpftool cannot list owner pids)."""
    ids = set()
    fd_dir = "/proc/%d/fdinfo" % pid
    for fd in os.listdir(fd_dir):
        try:
            with open(os.path.join(fd_dir, fd)) as f:
                for line in f:
                    if line.startswith("prog_id:"):
                        ids.add(int(line.split()[1]))
        except OSError:
            continue  # closed meanwhile
    listing = json.loads(subprocess.run(["bpftool", "prog", "show", "-j"], capture_output=True, check=True).stdout)
    return {p["id"]: p.get("name", "") for p in listing if p["id"] in ids}


def prog_fds_of(pid: int, names: Sequence[str] = ("kvmexit_exit", "kvmexit_entry", "kvmexit_wakeup")) -> Dict[str, int]:
    """fds in this process for the named BPF programs loaded by process ``pid``."""
    fds = {}
    for prog_id, name in program_ids_of(pid).items():
        if name in names:
            attr = (ctypes.c_uint32 * 3)(prog_id, 0, 0)
            fd = _libc.syscall(_SYS_BPF, _BPF_PROG_GET_FD_BY_ID, ctypes.byref(attr), ctypes.sizeof(attr))
            if fd < 0:
                raise OSError(ctypes.get_errno(), "BPF_PROG_GET_FD_BY_ID %d" % prog_id)
            fds[name] = fd
    return fds


#: (vcpu index, esr_ec, exits, halt ns reported during each exit, seconds between exit and entry)
PlanItem = Tuple[int, int, int, int, float]


def send_plan(exit_fd: int, entry_fd: int, wakeup_fd: int, plan: Sequence[PlanItem]) -> None:
    """Each vCPU of the plan is a thread named ``CPU n/KVM`` that sends its exits and entries."""
    by_vcpu: Dict[int, List[PlanItem]] = {}
    for item in plan:
        by_vcpu.setdefault(item[0], []).append(item)
    libc = ctypes.CDLL(None)
    errors: List[BaseException] = []

    def vcpu(index: int, items: List[PlanItem]) -> None:
        try:
            libc.prctl(15, b"CPU %d/KVM" % index, 0, 0, 0)  # PR_SET_NAME
            for _, ec, count, halt_ns, pause in items:
                for _ in range(count):
                    test_run_raw(exit_fd, TRAP, ec, 0x1000)
                    if halt_ns:
                        test_run_raw(wakeup_fd, halt_ns, 1, 1)
                    if pause:
                        time.sleep(pause)
                    test_run_raw(entry_fd, 0x1000)
        except BaseException as e:  # surfaced by the caller
            errors.append(e)

    threads = [threading.Thread(target=vcpu, args=(i, items)) for i, items in sorted(by_vcpu.items())]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]


class FakeVmm:
    """A child process named like a QEMU guest (``-name guest=NAME``) that sends ``plan``."""

    def __init__(self, fds: Dict[str, int], plan: Sequence[PlanItem], name: str) -> None:
        keys = ("kvmexit_exit", "kvmexit_entry", "kvmexit_wakeup")
        self.proc = subprocess.Popen(
            [sys.executable, __file__, *(str(fds[k]) for k in keys), json.dumps(list(plan)), "-name", "guest=" + name],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            pass_fds=tuple(fds[k] for k in keys),
            text=True,
        )
        line = self.proc.stdout.readline().strip() if self.proc.stdout else ""
        if line != "done":
            self.close()
            raise RuntimeError("fake VMM failed (%r)" % line)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def again(self) -> None:
        """Send the plan once more (new threads, the same process)."""
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write("again\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline().strip()
        if line != "done":
            raise RuntimeError("fake VMM failed (%r)" % line)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.communicate("", timeout=10)


if __name__ == "__main__":
    exit_fd, entry_fd, wakeup_fd = (int(a) for a in sys.argv[1:4])
    plan = [tuple(p) for p in json.loads(sys.argv[4])]
    send_plan(exit_fd, entry_fd, wakeup_fd, plan)  # type: ignore[arg-type]
    print("done", flush=True)
    for _line in sys.stdin:  # "again": the plan once more; end of input: exit
        send_plan(exit_fd, entry_fd, wakeup_fd, plan)  # type: ignore[arg-type]
        print("done", flush=True)
