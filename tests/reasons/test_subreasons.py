"""Sub-reason tables (hypercall ids, system registers, ISS decoding, MSRs) against the kernel.

Each table is checked twice: against values written out here from the 6.1 sources by hand, and,
where the kernel headers are installed (``scripts/setup.sh`` installs Debian's), against the
headers themselves, parsed here independently of the tables.
"""

from __future__ import annotations

import glob
import os
import re
from typing import Dict, Optional, Tuple

import pytest

from kvmexit.reasons import arm64_calls, arm64_iss, x86_sub
from kvmexit.reasons.arm64_sysregs import SYSREGS


def _header(rel: str) -> Optional[str]:
    for root in sorted(glob.glob("/usr/src/linux-headers-*-common")) + sorted(glob.glob("/usr/src/linux-source-*")):
        path = os.path.join(root, rel)
        if os.path.exists(path):
            with open(path) as f:
                return f.read()
    return None


def _need(rel: str) -> str:
    text = _header(rel)
    if text is None:
        pytest.skip("kernel header %s not installed (scripts/setup.sh installs Debian's)" % rel)
    return text


# --- hypercall function ids -------------------------------------------------------------------

# Written out from include/uapi/linux/psci.h, include/linux/arm-smccc.h and arm64's uapi kvm.h (6.1).
KNOWN_CALLS = {
    0x84000000: "PSCI_VERSION",
    0x84000001: "PSCI_CPU_SUSPEND",
    0xC4000001: "PSCI_CPU_SUSPEND64",
    0x84000002: "PSCI_CPU_OFF",
    0x84000003: "PSCI_CPU_ON",
    0xC4000003: "PSCI_CPU_ON64",
    0x84000004: "PSCI_AFFINITY_INFO",
    0xC4000004: "PSCI_AFFINITY_INFO64",
    0x84000008: "PSCI_SYSTEM_OFF",
    0x84000009: "PSCI_SYSTEM_RESET",
    0x8400000A: "PSCI_FEATURES",
    0x84000012: "PSCI_SYSTEM_RESET2",
    0xC4000012: "PSCI_SYSTEM_RESET264",
    0x95C1BA5E: "KVM_PSCI_CPU_SUSPEND",
    0x95C1BA61: "KVM_PSCI_MIGRATE",
    0x80000000: "SMCCC_VERSION",
    0x80000001: "SMCCC_ARCH_FEATURES",
    0x80000002: "SMCCC_ARCH_SOC_ID",
    0x80008000: "SMCCC_ARCH_WORKAROUND_1",
    0x80007FFF: "SMCCC_ARCH_WORKAROUND_2",
    0x80003FFF: "SMCCC_ARCH_WORKAROUND_3",
    0x8600FF01: "VENDOR_HYP_CALL_UID",
    0x86000000: "KVM_FEATURES",
    0x86000001: "KVM_PTP",
    0xC5000020: "HV_PV_TIME_FEATURES",
    0xC5000021: "HV_PV_TIME_ST",
    0x84000050: "TRNG_VERSION",
    0x84000053: "TRNG_RND32",
    0xC4000053: "TRNG_RND64",
}


@pytest.mark.parametrize("fid,name", sorted(KNOWN_CALLS.items()))
def test_known_function_ids(fid, name):
    assert arm64_calls.function_name(fid) == name


@pytest.mark.parametrize("fid", [0, 1, 0x84000015, 0xC4000000, 0x1_84000000, 0xFFFFFFFFFFFFFFFF])
def test_unknown_function_ids_are_numbers(fid):
    # 0xc4000000 (a 64-bit PSCI_VERSION) is not defined; bits 63:32 make any id unknown to KVM.
    assert arm64_calls.function_name(fid) == "FN_%#x" % fid


def test_names_are_unique():
    names = list(arm64_calls.FUNCTIONS.values())
    assert len(names) == len(set(names))


def test_psci_ids_equal_the_header():
    text = _need("include/uapi/linux/psci.h")
    got = 0
    for name, form, n in re.findall(r"#define\s+PSCI_\d_\d_(FN(?:64)?_\w+)\s+PSCI_0_2_(FN64|FN)\((\d+)\)", text):
        fid = 0x84000000 + (0x40000000 if form == "FN64" else 0) + int(n)
        want = "PSCI_" + name.split("_", 1)[1] + ("64" if form == "FN64" else "")
        want = want.replace("PSCI_PSCI_", "PSCI_")
        assert arm64_calls.FUNCTIONS.get(fid) == want, name
        got += 1
    assert got >= 30  # every PSCI 0.2/1.0/1.1 function of 6.1 was compared
    assert len([v for v in arm64_calls.FUNCTIONS.values() if v.startswith("PSCI_")]) == got


def _smccc_defines(text: str) -> Dict[str, int]:
    """Evaluate arm-smccc.h's plain numeric #defines and its ARM_SMCCC_CALL_VAL() ids."""
    text = text.replace("\\\n", " ")
    simple: Dict[str, int] = {}
    for name, value in re.findall(
        r"#define\s+(ARM_SMCCC_\w+)\s+(?:_AC\()?(0x[0-9a-fA-F]+|\d+)(?:,\s*U\))?U?\s*$", text, re.M
    ):
        simple[name] = int(value, 0)
    ids: Dict[str, int] = {}
    call = r"#define\s+(ARM_SMCCC_\w+)\s+ARM_SMCCC_CALL_VAL\(\s*(\w+)\s*,\s*(\w+)\s*,\s*(\w+)\s*,\s*(\w+)\s*\)"
    for name, typ, conv, owner, func in re.findall(call, text):

        def val(tok: str) -> int:
            return simple[tok] if tok in simple else int(tok, 0)

        ids[name] = (val(typ) << 31) | (val(conv) << 30) | ((val(owner) & 0x3F) << 24) | (val(func) & 0xFFFF)
    return ids


SMCCC_NAMES = {
    "ARM_SMCCC_VERSION_FUNC_ID": "SMCCC_VERSION",
    "ARM_SMCCC_ARCH_FEATURES_FUNC_ID": "SMCCC_ARCH_FEATURES",
    "ARM_SMCCC_ARCH_SOC_ID": "SMCCC_ARCH_SOC_ID",
    "ARM_SMCCC_ARCH_WORKAROUND_1": "SMCCC_ARCH_WORKAROUND_1",
    "ARM_SMCCC_ARCH_WORKAROUND_2": "SMCCC_ARCH_WORKAROUND_2",
    "ARM_SMCCC_ARCH_WORKAROUND_3": "SMCCC_ARCH_WORKAROUND_3",
    "ARM_SMCCC_VENDOR_HYP_CALL_UID_FUNC_ID": "VENDOR_HYP_CALL_UID",
    "ARM_SMCCC_VENDOR_HYP_KVM_FEATURES_FUNC_ID": "KVM_FEATURES",
    "ARM_SMCCC_VENDOR_HYP_KVM_PTP_FUNC_ID": "KVM_PTP",
    "ARM_SMCCC_HV_PV_TIME_FEATURES": "HV_PV_TIME_FEATURES",
    "ARM_SMCCC_HV_PV_TIME_ST": "HV_PV_TIME_ST",
    "ARM_SMCCC_TRNG_VERSION": "TRNG_VERSION",
    "ARM_SMCCC_TRNG_FEATURES": "TRNG_FEATURES",
    "ARM_SMCCC_TRNG_GET_UUID": "TRNG_GET_UUID",
    "ARM_SMCCC_TRNG_RND32": "TRNG_RND32",
    "ARM_SMCCC_TRNG_RND64": "TRNG_RND64",
}


def test_smccc_ids_equal_the_header():
    ids = _smccc_defines(_need("include/linux/arm-smccc.h"))
    for macro, name in SMCCC_NAMES.items():
        assert macro in ids, macro
        assert arm64_calls.FUNCTIONS.get(ids[macro]) == name, macro


def test_kvm_psci_0_1_ids_equal_the_header():
    text = _need("arch/arm64/include/uapi/asm/kvm.h")
    base = int(re.search(r"#define\s+KVM_PSCI_FN_BASE\s+(0x[0-9a-fA-F]+)", text).group(1), 16)
    found = re.findall(r"#define\s+KVM_PSCI_FN_(\w+)\s+KVM_PSCI_FN\((\d)\)", text)
    assert len(found) == 4
    for name, n in found:
        assert arm64_calls.FUNCTIONS[base + int(n)] == "KVM_PSCI_" + name


# --- system registers and the SYS64 ISS -------------------------------------------------------


def _esr_sys64(op0: int, op1: int, crn: int, crm: int, op2: int, rt: int, read: bool) -> int:
    """An ESR for EC 0x18 built by hand from the Arm ARM's ISS layout."""
    iss = (op0 << 20) | (op2 << 17) | (op1 << 14) | (crn << 10) | (rt << 5) | (crm << 1) | int(read)
    return (0x18 << 26) | (1 << 25) | iss


def test_decode_mrs_id_aa64pfr0():
    # e2evmm's `mrs x1, id_aa64pfr0_el1`: kvm_handle_sys_reg prints HSR 0x62300029 for it.
    esr = _esr_sys64(3, 0, 0, 4, 0, 1, read=True)
    assert esr == 0x62300029
    acc = arm64_iss.decode_sys64(esr)
    assert acc.encoding == (3, 0, 0, 4, 0) and acc.rt == 1 and not acc.is_write
    assert arm64_iss.sysreg_name(*acc.encoding) == "ID_AA64PFR0_EL1"
    assert arm64_iss.esr_ec(esr) == 0x18


@pytest.mark.parametrize(
    "enc,name",
    [
        ((3, 0, 12, 11, 5), "ICC_SGI1R_EL1"),
        ((3, 0, 1, 0, 1), "ACTLR_EL1"),
        ((2, 0, 1, 0, 4), "OSLAR_EL1"),
        ((2, 0, 0, 2, 2), "MDSCR_EL1"),
        ((3, 3, 14, 2, 1), "CNTP_CTL_EL0"),
        ((3, 3, 14, 9, 3), "PMEVCNTR11_EL0"),
        ((2, 0, 0, 15, 5), "DBGBCR15_EL1"),
        ((1, 0, 7, 14, 2), "DC_CISW"),
        ((3, 3, 13, 2, 0), "AMCR_EL0"),
    ],
)
def test_trapped_register_names(enc, name):
    assert arm64_iss.sysreg_name(*enc) == name
    assert arm64_iss.decode_sys64(_esr_sys64(*enc, rt=7, read=False)).encoding == enc


def test_write_direction_and_unknown_register():
    acc = arm64_iss.decode_sys64(_esr_sys64(3, 7, 15, 15, 7, 30, read=False))
    assert acc.is_write and acc.rt == 30
    assert arm64_iss.sysreg_name(*acc.encoding) == "S3_7_C15_C15_7"


def _sysreg_h_encodings(text: str) -> Dict[str, Tuple[int, int, int, int, int]]:
    pat = r"#define\s+SYS_(\w+)\s+sys_(?:reg|insn)\((\d+),\s*(\d+),\s*(\d+),\s*(\d+),\s*(\d+)\)"
    return {m[0]: tuple(int(x) for x in m[1:]) for m in re.findall(pat, text)}  # type: ignore[misc]


def test_every_sysreg_h_encoding_has_a_name():
    regs = _sysreg_h_encodings(_need("arch/arm64/include/asm/sysreg.h"))
    assert len(regs) > 150
    missing = {n: e for n, e in regs.items() if e not in SYSREGS}
    assert not missing
    # Names are the header's own (an alias may win where two share an encoding).
    assert sum(SYSREGS[e] == n for n, e in regs.items()) > 0.95 * len(regs)


# --- aborts and WFx --------------------------------------------------------------------------


def test_decode_data_abort_write_word():
    # e2evmm's `str w20, [x24]` to unmapped IPA: ISV, SAS=2 (4 bytes), SRT=20, WnR, DFSC translation L1.
    esr = (0x24 << 26) | (1 << 25) | (1 << 24) | (2 << 22) | (20 << 16) | (1 << 6) | 0x05
    ab = arm64_iss.decode_abort(esr)
    assert ab.isv and ab.size == 4 and ab.is_write and not ab.s1ptw
    assert ab.fault_type == "translation" and ab.fsc == 0x05


def test_decode_abort_without_syndrome():
    esr = (0x24 << 26) | (1 << 25) | 0x0F  # no ISV: size unknown; permission fault level 3
    ab = arm64_iss.decode_abort(esr)
    assert not ab.isv and ab.size is None and not ab.is_write
    assert ab.fault_type == "permission"
    assert arm64_iss.decode_abort((0x20 << 26) | 0x0B).fault_type == "access"
    assert arm64_iss.decode_abort(0x10).fault_type == "FSC_0x10"


@pytest.mark.parametrize("ti,kind", [(0, "WFI"), (1, "WFE"), (2, "WFIT"), (3, "WFET")])
def test_wfx_kind(ti, kind):
    assert arm64_iss.wfx_kind((0x01 << 26) | (1 << 25) | ti) == kind


def test_esr_h_field_positions():
    text = _need("arch/arm64/include/asm/esr.h")

    for name, want in [
        ("ESR_ELx_SYS64_ISS_OP0_SHIFT", 20),
        ("ESR_ELx_SYS64_ISS_OP2_SHIFT", 17),
        ("ESR_ELx_SYS64_ISS_OP1_SHIFT", 14),
        ("ESR_ELx_SYS64_ISS_CRN_SHIFT", 10),
        ("ESR_ELx_SYS64_ISS_RT_SHIFT", 5),
        ("ESR_ELx_SYS64_ISS_CRM_SHIFT", 1),
    ]:
        assert int(re.search(r"#define\s+%s\s+(\d+)" % name, text).group(1)) == want, name
    for name, want in [
        ("ESR_ELx_ISV_SHIFT", 24),
        ("ESR_ELx_SAS_SHIFT", 22),
        ("ESR_ELx_WNR_SHIFT", 6),
        ("ESR_ELx_S1PTW_SHIFT", 7),
    ]:
        assert int(re.search(r"#define\s+%s\s+\((\d+)\)" % name, text).group(1)) == want, name
    assert re.search(r"#define\s+ESR_ELx_SYS64_ISS_DIR_READ\s+0x1\b", text)


# --- x86 ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "index,name",
    [
        (0xC0000080, "EFER"),
        (0x6E0, "IA32_TSC_DEADLINE"),
        (0x830, "X2APIC_ICR"),
        (0x80B, "X2APIC_EOI"),
        (0x838, "X2APIC_TMICT"),
        (0x4B564D01, "KVM_SYSTEM_TIME_NEW"),
        (0x10, "IA32_TSC"),
        (0x12345, "MSR_0x12345"),
    ],
)
def test_msr_names(index, name):
    assert x86_sub.msr_name(index) == name


def test_msrs_equal_the_header():
    text = _need("arch/x86/include/asm/msr-index.h")
    defs = {n: int(v, 16) for n, v in re.findall(r"#define\s+MSR_(\w+)\s+(0x[0-9a-fA-F]+)", text)}
    para = _header("arch/x86/include/uapi/asm/kvm_para.h") or ""
    defs.update({n: int(v, 16) for n, v in re.findall(r"#define\s+MSR_(KVM_\w+)\s+(0x[0-9a-fA-F]+)", para)})
    checked = 0
    for index, name in x86_sub.MSRS.items():
        if name.startswith("X2APIC_"):
            continue
        if name.startswith("KVM_") and not para:
            continue
        assert defs.get(name) == index, name
        checked += 1
    assert checked >= 40


def test_x2apic_offsets_equal_the_header():
    text = _header("arch/x86/include/asm/apicdef.h")
    if text is None:
        pytest.skip("apicdef.h not installed")
    offs = {n: int(v, 16) for n, v in re.findall(r"#define\s+APIC_(\w+)\s+(0x[0-9a-fA-F]+)", text)}
    for index, name in x86_sub.MSRS.items():
        if name.startswith("X2APIC_"):
            assert 0x800 + (offs[name[7:]] >> 4) == index, name


def test_cr_name():
    assert x86_sub.cr_name(3) == "CR3"


# --- KVM_EXIT_* (kvm_userspace_exit) -----------------------------------------------------------


def test_userspace_exit_names():
    from kvmexit.reasons.kvm_run import userspace_exit_name

    assert userspace_exit_name(6) == "MMIO"
    assert userspace_exit_name(24) == "SYSTEM_EVENT"
    assert userspace_exit_name(10, -4) == "restart"
    assert userspace_exit_name(6, -14) == "error"
    assert userspace_exit_name(99) == "EXIT_99"


def test_userspace_exit_reasons_equal_the_header():
    from kvmexit.reasons.kvm_run import EXIT_REASONS

    text = _need("include/uapi/linux/kvm.h")
    start = text.index("#define KVM_EXIT_UNKNOWN")
    defs = re.findall(r"#define\s+KVM_EXIT_(\w+)\s+(\d+)\s*$", text[start : text.index("KVM_EXIT_IO_IN")], re.M)
    assert len(defs) >= 35
    for name, value in defs:
        assert EXIT_REASONS[int(value)] == name, name


# --- the sub-reason key and its names ------------------------------------------------------------


def test_sub_labels():
    from kvmexit.reasons import subreasons as sr

    assert sr.label_arm64(0x16, sr.NONE) == "-"
    assert sr.label_arm64(0x01, sr.WFI) == "WFI" and sr.label_arm64(0x01, sr.WFE) == "WFE"
    assert sr.label_arm64(0x16, sr.hvc_sub(0x84000003)) == "PSCI_CPU_ON"
    assert sr.label_arm64(0x12, sr.hvc_sub(0xC4000003)) == "PSCI_CPU_ON64"
    assert sr.label_arm64(0x16, sr.hvc_sub(0)) == "FN_0x0"  # a real call with id 0, not "none"
    assert sr.hvc_sub(0) != sr.NONE
    assert sr.label_arm64(0x16, sr.hvc_sub(0x1_84000003)) == "FN_0x84000003+high"
    sgi = (0x18 << 26) | (1 << 25) | (3 << 20) | (5 << 17) | (0 << 14) | (12 << 10) | (9 << 5) | (11 << 1) | 0
    assert sr.label_arm64(0x18, sr.sys64_sub(sgi)) == "ICC_SGI1R_EL1 write"
    assert sr.sys64_sub(sgi) == sr.sys64_sub(sgi | (30 << 5))  # Rt is not part of the key
    assert sr.label_arm64(0x18, sr.sys64_sub((3 << 20) | 1)) == "MIDR_EL1 read"
    impdef = (3 << 20) | (7 << 17) | (7 << 14) | (15 << 10) | (15 << 1) | 1
    assert sr.label_arm64(0x18, sr.sys64_sub(impdef)) == "S3_7_C15_C15_7 read"
    assert sr.label_arm64(0x24, sr.abort_sub(sr.ABORT_MEMORY, 0x50001000)) == "memory"
    assert sr.abort_sub(sr.ABORT_MEMORY, 0x50001000) == sr.abort_sub(sr.ABORT_MEMORY, 0x50002000)
    assert sr.label_arm64(0x24, sr.abort_sub(sr.ABORT_USER_MMIO, 0x9000000)) == "mmio-vmm 0x9000000"
    assert sr.label_arm64(0x24, sr.abort_sub(sr.ABORT_KERNEL_MMIO, 0x8000004)) == "mmio-kernel 0x8000004"
    # A value that does not fit its class is a number, never dropped or mislabelled.
    assert sr.label_arm64(0x01, 7) == "SUB_0x7"
    assert sr.label_arm64(0x18, sr.hvc_sub(5)) == "SUB_%#x" % sr.hvc_sub(5)
    assert sr.label_arm64(0x24, 9 << 56) == "SUB_%#x" % (9 << 56)
