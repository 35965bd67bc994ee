"""Drive raw-tracepoint BPF programs with BPF_PROG_TEST_RUN (kernel 5.10+), through ctypes.

``bpf_get_current_pid_tgid()`` inside a test run reports the calling thread, so events can be
sent from several Python threads to exercise per-thread pairing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import platform

__all__ = ["test_run_raw", "bpf_syscall", "BPF_PROG_TEST_RUN"]

BPF_PROG_TEST_RUN = 10
_SYS_BPF = {"x86_64": 321, "aarch64": 280}[platform.machine()]
_libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)


class _TestAttr(ctypes.Structure):
    _fields_ = [
        ("prog_fd", ctypes.c_uint32),
        ("retval", ctypes.c_uint32),
        ("data_size_in", ctypes.c_uint32),
        ("data_size_out", ctypes.c_uint32),
        ("data_in", ctypes.c_uint64),
        ("data_out", ctypes.c_uint64),
        ("repeat", ctypes.c_uint32),
        ("duration", ctypes.c_uint32),
        ("ctx_size_in", ctypes.c_uint32),
        ("ctx_size_out", ctypes.c_uint32),
        ("ctx_in", ctypes.c_uint64),
        ("ctx_out", ctypes.c_uint64),
        ("flags", ctypes.c_uint32),
        ("cpu", ctypes.c_uint32),
        ("batch_size", ctypes.c_uint32),
        ("_pad", ctypes.c_uint32),
    ]


def bpf_syscall(cmd: int, attr: object, size: int) -> int:
    """bpf(2) itself: the result (errno in ctypes.get_errno() when negative)."""
    return _libc.syscall(_SYS_BPF, cmd, attr, size)


def test_run_raw(prog_fd: int, *args: int) -> int:
    """Run a raw-tracepoint program once with ``args`` as its u64 arguments; returns its retval."""
    args = args or (0,)  # an empty context is refused
    ctx = (ctypes.c_uint64 * len(args))(*args)
    attr = _TestAttr()
    attr.prog_fd = prog_fd
    attr.ctx_in = ctypes.addressof(ctx)
    attr.ctx_size_in = ctypes.sizeof(ctx)
    rc = _libc.syscall(_SYS_BPF, BPF_PROG_TEST_RUN, ctypes.byref(attr), ctypes.sizeof(attr))
    if rc != 0:
        err = ctypes.get_errno()
        raise OSError(err, "BPF_PROG_TEST_RUN: %s" % os.strerror(err))
    return attr.retval


test_run_raw.__test__ = False  # not a pytest test
