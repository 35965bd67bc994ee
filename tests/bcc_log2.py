"""bcc's log2 helpers from src/cc/export/helpers.h, transcribed literally, so that the Python
side's histogram slots can be checked against what the BPF side computes."""

from __future__ import annotations


def bpf_log2(v: int) -> int:
    r = int(v > 0xFFFF) << 4
    v >>= r
    shift = int(v > 0xFF) << 3
    v >>= shift
    r |= shift
    shift = int(v > 0xF) << 2
    v >>= shift
    r |= shift
    shift = int(v > 0x3) << 1
    v >>= shift
    r |= shift
    r |= v >> 1
    return r


def bpf_log2l(v: int) -> int:
    hi = v >> 32
    return bpf_log2(hi) + 32 + 1 if hi else bpf_log2(v) + 1
