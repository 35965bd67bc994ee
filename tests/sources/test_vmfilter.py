"""Verdicts of ``--vm`` on processes as they appear, on a fake /proc (no BPF)."""

from __future__ import annotations

from pathlib import Path

from kvmexit.names import NameResolver
from kvmexit.sources.vmfilter import VmFilter, process_start


def spawn(procfs: Path, pid: int, start: int, name: str = "", state: str = "S") -> None:
    d = procfs / str(pid)
    d.mkdir(parents=True, exist_ok=True)
    fields = [state] + ["0"] * 18 + [str(start)] + ["0"] * 10
    (d / "stat").write_text("%d (qemu (x) y) %s\n" % (pid, " ".join(fields)))
    argv = ["qemu"] + (["-name", "guest=%s,debug-threads=on" % name] if name else [])
    (d / "cmdline").write_bytes(b"\0".join(a.encode() for a in argv) + b"\0")


def kill(procfs: Path, pid: int) -> None:
    for f in (procfs / str(pid)).iterdir():
        f.unlink()
    (procfs / str(pid)).rmdir()


def make(tmp_path: Path, pinned=()) -> VmFilter:
    return VmFilter(["web01"], pinned, NameResolver(procfs=str(tmp_path), libvirt_run=str(tmp_path / "none")))


def test_start_time_is_read_past_a_comm_with_parentheses(tmp_path):
    spawn(tmp_path, 7, 12345)
    assert process_start(str(tmp_path), 7) == (b"S", 12345)
    assert process_start(str(tmp_path), 8) is None


def test_named_vm_is_admitted_others_are_not(tmp_path):
    spawn(tmp_path, 10, 100, "web01")
    spawn(tmp_path, 11, 100, "db02")
    spawn(tmp_path, 12, 100)
    vf = make(tmp_path)
    assert vf.judge(10)[1] is True  # new, and it runs: for the kernel
    assert vf.judge(10)[1] is False  # known: nothing more to give the kernel
    verdicts = {pid: vf.judge(pid)[0] for pid in (10, 11, 12)}
    assert {pid: (v.allowed, v.why) for pid, v in verdicts.items()} == {
        10: (True, "named"),
        11: (False, "other"),
        12: (False, "other"),
    }


def test_a_new_verdict_goes_to_the_kernel_only_while_the_process_runs(tmp_path):
    spawn(tmp_path, 10, 100, "web01")
    spawn(tmp_path, 11, 100, "web01", state="Z")  # its leader has exited
    vf = make(tmp_path)
    assert vf.judge(10)[1] is True
    assert vf.judge(11)[1] is False
    assert vf.judge(10)[1] is False


def test_a_reused_pid_is_judged_again_by_its_own_name(tmp_path):
    spawn(tmp_path, 10, 100, "web01")
    vf = make(tmp_path)
    assert vf.judge(10)[0].allowed
    kill(tmp_path, 10)
    assert vf.judge(10)[0].allowed  # gone: its exits are still the VM's
    spawn(tmp_path, 10, 200, "db02")  # the same pid, another program
    verdict, fresh = vf.judge(10)
    assert (verdict.allowed, fresh) == (False, True)
    kill(tmp_path, 10)
    spawn(tmp_path, 10, 300, "web01")
    assert vf.judge(10)[0].allowed


def test_unnamed_when_gone_before_judged_and_pinned_always_in(tmp_path):
    vf = make(tmp_path, pinned=[42])
    verdict, fresh = vf.judge(99)
    assert (verdict.allowed, verdict.why, fresh) == (False, "unnamed", False)
    assert vf.judge(42)[0].allowed
    vf.exclude(verdict, 3)
    vf.exclude(vf.judge(99)[0], 2)
    assert vf.excluded == {"other": 0, "unnamed": 5}
    spawn(tmp_path, 99, 5, "web01")  # that pid now runs the VM: judged afresh
    assert vf.judge(99)[0].allowed


def test_verdicts_expire_with_their_processes_unless_the_maps_still_hold_them(tmp_path):
    for pid in (1, 2, 3):
        spawn(tmp_path, pid, 100, "web01")
    vf = make(tmp_path)
    for pid in (1, 2, 3):
        vf.judge(pid)
    kill(tmp_path, 1)
    kill(tmp_path, 2)
    spawn(tmp_path, 3, 999, "web01")  # reused
    vf.expire(present=[2])
    assert len(vf) == 1  # 2 stays: the kernel's maps still hold its exits
    vf.expire(present=[])
    assert len(vf) == 0
