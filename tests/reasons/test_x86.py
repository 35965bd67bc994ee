from __future__ import annotations

import re
from pathlib import Path

import pytest

from kvmexit.reasons import ARCH_X86, ISA_SVM, ISA_VMX, label, svm, vmx

FORMATS = Path(__file__).resolve().parent.parent / "data" / "formats"


def symbolic_tables(format_text: str) -> list:
    """The {value, "name"} pairs of each __print_symbolic in a format file, in order."""
    tables = []
    for chunk in format_text.split("__print_symbolic(")[1:]:
        pairs = re.findall(r'\{\s*([^,{}]+?),\s*"([^"]+)"\s*\}', chunk.split(") :")[0].split("),")[0])
        tables.append({eval(v) & 0xFFFFFFFF: n for v, n in pairs})
    return tables


def test_tables_match_the_kernels_own_print_format():
    """Cross-check against a captured 6.18 kvm_exit format file (x86-6.18)."""
    path = FORMATS / "x86-6.18" / "kvm_exit" / "format"
    if not path.exists():
        pytest.skip("fixture %s not present" % path)
    vmx_table, svm_table = symbolic_tables(path.read_text())[:2]
    assert vmx.EXIT_REASONS == vmx_table
    assert svm.EXIT_REASONS == svm_table


def test_vmx_names_and_failed_vmentry_flag():
    assert label(ARCH_X86, 12, ISA_VMX) == "HLT"
    assert label(ARCH_X86, 48, ISA_VMX) == "EPT_VIOLATION"
    assert label(ARCH_X86, 0x80000021, ISA_VMX) == "INVALID_STATE+FAILED_VMENTRY"


def test_vmx_unknown_reason_and_unknown_flag_bits_are_shown_raw():
    assert label(ARCH_X86, 0x99, ISA_VMX) == "VMX_0x99"
    assert label(ARCH_X86, 0x08000000 | 12, ISA_VMX) == "HLT+0x8000000"


def test_svm_names_are_the_kernels_lower_case_ones():
    assert label(ARCH_X86, 0x78, ISA_SVM) == "hlt"
    assert label(ARCH_X86, 0x400, ISA_SVM) == "npf"
    assert label(ARCH_X86, 0xFFFFFFFF, ISA_SVM) == "invalid_guest_state"
    assert label(ARCH_X86, 0x1234, ISA_SVM) == "SVM_0x1234"


def test_unknown_isa_is_not_guessed():
    assert label(ARCH_X86, 12, 7) == "ISA7_0xc"


def test_unknown_arch_is_an_error():
    with pytest.raises(ValueError):
        label("riscv", 0, 0)
