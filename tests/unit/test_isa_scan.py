"""The machine-code scan behind the local model server's portability test (tests/isa.py),
on instructions assembled here by binutils' own assembler: it names what it must."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from tests.isa import scan

CODE = {
    # x86-64-v3: VEX-encoded AVX2 and FMA, BMI2
    "vpaddd %ymm1, %ymm2, %ymm3": None,
    "vfmadd231ps %ymm1, %ymm2, %ymm3": None,
    "shlx %rax, %rbx, %rcx": None,
    # beyond it
    "vpaddd %zmm1, %zmm2, %zmm3": "AVX-512 (EVEX)",
    "vpaddd %xmm17, %xmm2, %xmm3": "AVX-512 (EVEX)",  # AVX-512VL on an xmm register
    "vpternlogd $0x96, %ymm1, %ymm2, %ymm3": "AVX-512 (EVEX)",  # no mask, no zmm
    "{vex} vpdpbusd %ymm1, %ymm2, %ymm3": "AVX-VNNI",
    "tdpbssd %tmm1, %tmm2, %tmm3": "AMX",
    "adcx %rax, %rbx": "ADX",
}


@pytest.mark.skipif(shutil.which("as") is None, reason="binutils' assembler not installed")
@pytest.mark.parametrize("instruction", list(CODE))
def test_each_instruction_is_named_by_its_extension(instruction: str, tmp_path: Path) -> None:
    source = tmp_path / "code.s"
    source.write_text(f".text\n{instruction}\nret\n")
    subprocess.run(["as", "-o", str(tmp_path / "code.o"), str(source)], check=True)
    found = scan(tmp_path / "code.o")
    assert found.instructions == 2, found  # the instruction and the ret
    expected = CODE[instruction]
    assert dict(found.beyond) == ({expected: 1} if expected else {}), found
