"""The local model server runs on every x86-64 CPU with AVX2 (x86-64-v3), whatever CPU
runs this test: checked from what the server reports of its own build, from its machine
code (tests/isa.py, sharing nothing with that report), and by loading the model on an
emulated Haswell (qemu's user-mode emulator, from Debian, when `make test` installed it).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from streamproc.kafka.broker import free_port, spawn_child, stop_child, wait_http_ok
from streamproc.llm import local
from tests.isa import scan

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]
MODELS = ROOT / ".models"
QEMU = ROOT / ".tools" / "bin" / "qemu-x86_64-static"


@pytest.fixture(scope="module", autouse=True)
def _installed() -> None:
    assert local.installed(MODELS), "make test installs it: make models"


def test_the_server_reports_a_build_for_x86_64_v3_and_nothing_beyond() -> None:
    info = local.build_info(MODELS)
    features = local.build_features(str(info["system_info"]))
    on = {name for name, enabled in features.items() if enabled}
    assert {"AVX", "AVX2", "FMA", "F16C"} <= on, info  # a real report, read right
    assert local.build_needs_beyond_v3(features) == [], info


def test_the_servers_machine_code_uses_nothing_beyond_x86_64_v3() -> None:
    libraries = local.server_libraries(MODELS)
    assert libraries, "the server's native code was not found"
    for library in libraries:
        found = scan(library)
        assert found.instructions > 100_000, (library, found)  # the code was read
        assert not found.beyond, (library.name, dict(found.beyond))


@pytest.mark.skipif(not QEMU.exists(), reason="qemu-x86_64-static not in .tools (make tools)")
def test_the_server_loads_the_model_on_an_emulated_haswell(tmp_path: Path) -> None:
    """qemu's TCG has no AVX-512 or AMX at all, and `-cpu Haswell` reports AVX2 and FMA:
    the wheel this replaced died here with SIGILL right after "AMX is not ready to be
    used!", as on an AMD EPYC. Inference is too slow under emulation for make test (8 s a
    token); the machine-code scan above covers the kernels."""
    port = free_port()
    env = {**local._child_env(MODELS), "QEMU_CPU": "Haswell"}
    args = [str(QEMU), sys.executable, "-m", "streamproc.llm.local", "host", str(MODELS),
            "--port", str(port), "--context", "512", "--threads", "1"]  # fmt: skip
    log = tmp_path / "server.log"
    started = time.monotonic()
    with log.open("ab") as out:
        proc = spawn_child(args, env=env, log=out)
    try:
        healthy = wait_http_ok(f"http://127.0.0.1:{port}/health", proc, 240, poll_s=1)
        text = log.read_text(errors="replace")
        assert healthy, (proc.poll(), text[-2000:])
        assert "model loaded" in text, text[-2000:]
        print(f"loaded on an emulated Haswell in {time.monotonic() - started:.0f} s")
    finally:
        stop_child(proc, 10)


def test_build_report_names_what_a_host_specific_build_needs() -> None:
    """The report of the wheel this replaced (libggml-cpu built for an AMX host)."""
    report = "CPU : SSE3 = 1 | AVX = 1 | AVX2 = 1 | AVX512 = 1 | AMX_INT8 = 1 | OPENMP = 1 |"
    needs = local.build_needs_beyond_v3(local.build_features(report))
    assert needs == ["AMX_INT8", "AVX512"]
    assert local.build_needs_beyond_v3({"NEW_THING": True}) == ["NEW_THING"]  # unknown: no


def test_a_cpu_below_x86_64_v3_is_named_in_one_line() -> None:
    nehalem = "flags\t\t: fpu sse sse2 pni ssse3 sse4_1 sse4_2 popcnt\n"
    assert local.missing_cpu_features(nehalem) == ["avx", "avx2", "fma", "f16c", "bmi2"]
    problem = local.cpu_problem(nehalem, "x86_64")
    assert problem is not None and "\n" not in problem and "AVX2" in problem, problem
    assert "lacks avx, avx2, fma, f16c, bmi2" in problem
    assert local.cpu_problem(nehalem, "aarch64") == (
        "the local model server is an x86-64 build; this machine is aarch64"
    )
    assert local.cpu_problem() is None  # this host runs the real-model tests


def test_the_cpu_check_make_test_runs_first_answers_in_one_line() -> None:
    probe = subprocess.run(
        [sys.executable, "-m", "streamproc.llm.local", "check-cpu", str(MODELS)],
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert probe.returncode == 0 and probe.stdout.count("\n") == 1, probe
