"""Which instruction sets a native library's machine code uses beyond x86-64-v3.

An oracle for the local model server's portability that shares nothing with the server's
own report of its build: it disassembles the code (binutils' objdump) and classifies every
instruction. What counts as beyond x86-64-v3 (Haswell, Zen):
- any EVEX-encoded instruction (AVX-512 in all its parts: zmm, mask registers, and the
  xmm/ymm forms of AVX-512VL), told by its first opcode byte, 0x62, which in 64-bit mode
  is always the EVEX prefix;
- AMX (tile registers), and the VEX-encoded AVX-VNNI, AVX-IFMA and AVX-NE-CONVERT;
- ADX, SHA and GFNI.
A library whose code dispatches at run time between variants (cpuid checks) would show its
guarded variants here too: this check is deliberately strict, since the server's own build
has a single variant.
"""

from __future__ import annotations

import shutil
import subprocess
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

_PREFIXES = {"26", "2e", "36", "3e", "64", "65", "67"}
_EXTENSIONS: dict[str, str] = {
    "AMX": "ldtilecfg sttilecfg tileloadd tileloaddt1 tilestored tilerelease tilezero "
    "tdpbssd tdpbsud tdpbusd tdpbuud tdpbf16ps tdpfp16ps",
    "AVX-VNNI": "vpdpbusd vpdpbusds vpdpwssd vpdpwssds vpdpbssd vpdpbssds vpdpbsud "
    "vpdpbsuds vpdpbuud vpdpbuuds",
    "AVX-IFMA": "vpmadd52luq vpmadd52huq",
    "AVX-NE-CONVERT": "vcvtneps2bf16 vbcstnebf162ps vbcstnesh2ps vcvtneebf162ps "
    "vcvtneeph2ps vcvtneobf162ps vcvtneoph2ps",
    "ADX": "adcx adox",
    "SHA": "sha1rnds4 sha1nexte sha1msg1 sha1msg2 sha256rnds2 sha256msg1 sha256msg2",
    "GFNI": "gf2p8affineqb gf2p8affineinvqb gf2p8mulb vgf2p8affineqb vgf2p8affineinvqb vgf2p8mulb",
}
_BEYOND = {m: kind for kind, names in _EXTENSIONS.items() for m in names.split()}


def objdump() -> str:
    found = shutil.which("objdump")
    if found is None:
        raise RuntimeError("objdump (binutils, installed with gcc) is needed for this check")
    return found


@dataclass
class Scan:
    instructions: int = 0  # every instruction read, so an empty scan cannot pass unseen
    beyond: Counter[str] = field(default_factory=Counter)  # by extension beyond v3


def scan(library: Path) -> Scan:
    """Every instruction of `library`'s code, and those beyond x86-64-v3 by extension."""
    out = Scan()
    cmd = [objdump(), "-d", "--insn-width=15", str(library)]
    with subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, bufsize=1 << 20) as proc:
        assert proc.stdout is not None
        for line in proc.stdout:
            kind = classify(line)
            if kind is not None:
                out.instructions += 1
                if kind:
                    out.beyond[kind] += 1
    if proc.returncode != 0:
        raise RuntimeError(f"objdump failed on {library} ({proc.returncode})")
    return out


def classify(line: str) -> str | None:
    """One line of `objdump -d --insn-width=15`: None when it is no instruction, else the
    extension beyond v3 the instruction needs, or "" for none."""
    parts = line.split("\t")
    if len(parts) < 3 or not parts[0].rstrip().endswith(":") or not parts[2].strip():
        return None
    code = parts[1].split()
    first = next((b for b in code if b not in _PREFIXES), "")
    if first == "62":
        return "AVX-512 (EVEX)"
    words = parts[2].split()
    if words and words[0].startswith("{"):  # "{vex} vpdpbusd …"
        words = words[1:]
    return _BEYOND.get(words[0], "") if words else None
