from __future__ import annotations

import re

import pytest

from kvmexit.reasons import ARCH_ARM64, arm64, label, normalize_arm64

# Every EC defined in arch/arm64/include/asm/esr.h (6.x), written out independently of the table.
ESR_H_CLASSES = """
UNKNOWN 0x00 WFx 0x01 CP15_32 0x03 CP15_64 0x04 CP14_MR 0x05 CP14_LS 0x06 FP_ASIMD 0x07
CP10_ID 0x08 PAC 0x09 OTHER 0x0A CP14_64 0x0C BTI 0x0D ILL 0x0E SVC32 0x11 HVC32 0x12 SMC32 0x13
SVC64 0x15 HVC64 0x16 SMC64 0x17 SYS64 0x18 SVE 0x19 ERET 0x1a FPAC 0x1C SME 0x1D IMP_DEF 0x1f
IABT_LOW 0x20 IABT_CUR 0x21 PC_ALIGN 0x22 DABT_LOW 0x24 DABT_CUR 0x25 SP_ALIGN 0x26 MOPS 0x27
FP_EXC32 0x28 FP_EXC64 0x2C GCS 0x2D SERROR 0x2F BREAKPT_LOW 0x30 BREAKPT_CUR 0x31 SOFTSTP_LOW 0x32
SOFTSTP_CUR 0x33 WATCHPT_LOW 0x34 WATCHPT_CUR 0x35 BKPT32 0x38 VECTOR32 0x3A BRK64 0x3C
"""


def esr_h() -> dict:
    words = ESR_H_CLASSES.split()
    return {int(v, 16): k for k, v in zip(words[::2], words[1::2])}


def test_every_esr_h_class_is_named_exactly():
    assert arm64.EXCEPTION_CLASSES == esr_h()


@pytest.mark.parametrize("ec,name", sorted(esr_h().items()))
def test_trap_exits_are_named_by_class(ec, name):
    code, detail = normalize_arm64(arm64.ARM_EXCEPTION_TRAP, ec)
    assert label(ARCH_ARM64, code, detail) == name


@pytest.mark.parametrize(
    "ret,name",
    [(0, "IRQ"), (1, "EL1_SERROR"), (3, "IL"), (0xBADCA11, "HYP_GONE")],
)
def test_non_trap_types_ignore_a_stale_class(ret, name):
    # The raw esr_ec is stale on IRQ exits; it must not turn an IRQ into a trap name.
    code, detail = normalize_arm64(ret, 0x16)
    assert detail == 0
    assert label(ARCH_ARM64, code, detail) == name


def test_serror_bit_is_masked_and_kept_as_flag():
    code, detail = normalize_arm64((1 << 31) | 2, 0x24)
    assert code == 2
    assert detail == 0x24 | (1 << 31)
    assert label(ARCH_ARM64, code, detail) == "DABT_LOW+SERROR"
    code, detail = normalize_arm64((1 << 31) | 0, 0x24)
    assert (code, label(ARCH_ARM64, code, detail)) == (0, "IRQ+SERROR")


def test_negative_ret_as_signed_int_is_handled():
    # The tracepoint field is an int: bit 31 arrives as a negative number in text traces.
    code, detail = normalize_arm64(-(1 << 31) + 2, 0x01)
    assert (code, detail) == (2, 0x01 | (1 << 31))


@pytest.mark.parametrize("ec", [0x02, 0x0B, 0x14, 0x1B, 0x23, 0x2A, 0x3F])
def test_unallocated_classes_show_their_number(ec):
    assert label(ARCH_ARM64, 2, ec) == "EC_%#04x" % ec
    assert re.match(r"EC_0x[0-9a-f]{2}$", label(ARCH_ARM64, 2, ec))


def test_unknown_exception_type_shows_its_number():
    assert label(ARCH_ARM64, 7, 0) == "EXC_0x7"
