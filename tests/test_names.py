from __future__ import annotations

import pytest

from kvmexit.names import NameResolver, vcpu_from_comm, vm_name_from_cmdline


@pytest.mark.parametrize(
    "argv,name",
    [
        (["qemu", "-name", "guest=web01,debug-threads=on"], "web01"),
        (["qemu", "-name", "db"], "db"),
        (["qemu", "-name", "process=x,guest=g1"], "g1"),
        (["qemu", "-name", "a,,b"], "a,b"),
        (["qemu", "-m", "512"], None),
        (["qemu", "-name"], None),
    ],
)
def test_vm_name_from_qemu_command_line(argv, name):
    assert vm_name_from_cmdline(argv) == name


@pytest.mark.parametrize("comm,vcpu", [("CPU 3/KVM", 3), ("CPU 12/KVM", 12), ("qemu-kvm", None), ("CPU x/KVM", None)])
def test_vcpu_from_thread_name(comm, vcpu):
    assert vcpu_from_comm(comm) == vcpu


@pytest.fixture
def resolver(data_dir):
    return NameResolver(procfs=str(data_dir / "proc"), libvirt_run=str(data_dir / "libvirt-run"))


def test_resolver_reads_proc_fixture(resolver):
    t = resolver.thread(4242, 4244)
    assert (t.comm, t.vm, t.vcpu) == ("CPU 1/KVM", "web01", 1)
    assert resolver.vm(5000) == "plain,vm"


def test_libvirt_pid_file_names_a_vm_without_name_option(resolver):
    assert resolver.vm(6000) == "db02"


def test_kernel_comm_wins_and_dead_threads_keep_names(resolver):
    assert resolver.thread(4242, 4243, comm="CPU 0/KVM").vcpu == 0
    assert resolver.thread(9999, 9998, comm="CPU 7/KVM") == resolver.thread(9999, 9998, comm="CPU 7/KVM")
    assert resolver.thread(9999, 9998).comm == ""
    assert resolver.vm(9999) is None


def test_refresh_rereads_a_live_process_and_keeps_the_name_of_a_dead_one(resolver, tmp_path, data_dir):
    import shutil

    proc = tmp_path / "proc"
    shutil.copytree(str(data_dir / "proc"), str(proc))
    r = NameResolver(procfs=str(proc), libvirt_run=str(data_dir / "libvirt-run"))
    assert r.vm(4242) == "web01"
    (proc / "4242" / "cmdline").write_bytes(b"qemu\0-name\0guest=web02\0")  # pid reused while alive
    assert r.vm(4242) == "web01" and r.refresh(4242) == "web02"
    shutil.rmtree(str(proc / "4242"))  # the VMM exited before a late notification was handled
    assert r.refresh(4242) == "web02" and r.vm(4242) == "web02"
    assert r.refresh(4243) is None  # never known, not running: nothing to keep


def test_alive_and_vm_lookup(resolver):
    assert resolver.alive(4242, 4243)
    assert resolver.alive(5000, 5001)  # a comm with spaces and parentheses
    assert not resolver.alive(4242, 4244)  # zombie
    assert not resolver.alive(4242, 1)
    assert resolver.tgids_of_vm(["web01", "db02"]) == {4242: "web01", 6000: "db02"}
