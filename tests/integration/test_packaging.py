"""The package as a user installs it: the wheel, built the way the image builds it, in a
fresh virtual environment, run from an empty folder.

The wheel is built from what the Dockerfile's build stage copies (its COPY lines, with
.dockerignore applied), so a data folder the image would miss fails here. Its data
files are compared byte for byte with the repository's top-level folders, read by
path (not through the package). Then it is installed with pip into a new virtual
environment, with its dependencies from the package index under constraints.txt, and
`streamproc demo` must brief every case from an empty folder, where no schema, topic
or prompt file is within reach but the installed ones.
"""

from __future__ import annotations

import fnmatch
import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
# The repository's data folders and where the wheel must carry each file.
SOURCES = {
    "schemas": "streamproc/data/schemas",
    "topics": "streamproc/data/topics",
    "prompts": "streamproc/data/prompts",
    "procedures": "streamproc/data/procedures",
    "tests/eval/scenarios": "streamproc/data/eval/scenarios",
    "tests/eval/heldout": "streamproc/data/eval/heldout",
    "tests/eval/claims": "streamproc/data/eval/claims",
}


def _build_stage_copies() -> list[str]:
    """Sources of the COPY lines of the Dockerfile's first (build) stage."""
    text = (ROOT / "Dockerfile").read_text()
    stages = re.split(r"^FROM ", text, flags=re.M)[1:]
    assert len(stages) == 2, "expected a build stage and a run stage"
    copies = []
    for line in stages[0].splitlines():
        if line.startswith("COPY "):
            copies += line.split()[1:-1]
    return copies


def _ignored(rel: str, patterns: list[str]) -> bool:
    """.dockerignore's rule: the last pattern matching the path or a parent wins."""
    parts = rel.split("/")
    ignored = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        pat = pattern.lstrip("!").removeprefix("**/")
        prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
        if any(fnmatch.fnmatch(p, pat) or fnmatch.fnmatch(p.split("/")[-1], pat) for p in prefixes):
            ignored = not negate
    return ignored


def _docker_context(dest: Path) -> None:
    """The build stage's files, as `docker build` would give them to it."""
    patterns = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    for source in _build_stage_copies():
        for path in _entries(ROOT / source):
            rel = path.relative_to(ROOT).as_posix()
            if _ignored(rel, patterns):
                continue
            target = dest / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            if path.is_symlink():  # COPY keeps links as links
                target.symlink_to(os.readlink(path))
            else:
                shutil.copy2(path, target)


def _entries(src: Path) -> list[Path]:
    """Files and links under `src` (a link to a folder is one entry, not followed)."""
    if not src.is_dir():
        return [src]
    out = []
    for folder, dirs, files in os.walk(src):
        out += [Path(folder, d) for d in dirs if Path(folder, d).is_symlink()]
        out += [Path(folder, f) for f in files]
    return out


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    context = tmp_path_factory.mktemp("docker-build-stage")
    _docker_context(context)
    out = tmp_path_factory.mktemp("wheels")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--wheel-dir", str(out), "."],
        cwd=context,
        check=True,
        timeout=300,
    )
    [built] = out.glob("streamproc-*.whl")
    return built


def test_the_wheel_carries_every_data_file_as_in_the_repository(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
        for source, packaged in SOURCES.items():
            files = [p for p in (ROOT / source).rglob("*") if p.is_file()]
            assert files, source
            for path in files:
                name = f"{packaged}/{path.relative_to(ROOT / source).as_posix()}"
                assert name in names, f"{name} is not in the wheel"
                assert z.read(name) == path.read_bytes(), f"{name} differs from {source}"
        assert (
            z.read("streamproc/data/eval/baseline.json")
            == (ROOT / "tests/eval/baseline.json").read_bytes()
        )
        assert "streamproc/data/llm_prices.yaml" in names
        assert not any(n.startswith(("tests/", "bench/")) for n in names)


def test_installed_wheel_runs_the_demo_and_the_evaluation_from_an_empty_folder(
    wheel: Path, tmp_path: Path
) -> None:
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "-q"]
    subprocess.run(
        [*pip, "--disable-pip-version-check", "-c", str(ROOT / "constraints.txt"), str(wheel)],
        check=True,
        timeout=600,
    )
    empty = tmp_path / "elsewhere"
    empty.mkdir()
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("STREAMPROC_", "PYTHON", "VIRTUAL_ENV"))
    }
    env["PATH"] = f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}"

    def run_there(*command: str) -> subprocess.CompletedProcess[str]:
        """A command of the fresh venv, run from the empty folder."""
        return subprocess.run(
            [str(venv / "bin" / command[0]), *command[1:]],
            cwd=empty,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )

    imported = run_there("python", "-c", "import streamproc; print(streamproc.__file__)")
    assert imported.returncode == 0, imported.stderr
    where = imported.stdout
    assert where.startswith(str(venv)), f"streamproc imported from {where}, not the wheel"

    demo = run_there("streamproc", "demo")
    assert demo.returncode == 0, demo.stdout[-3000:] + demo.stderr[-3000:]
    assert "✓ every scenario case briefed" in demo.stdout
    # one scripted round of analysts' feedback, and its effect on the metrics printed
    assert "⑥ an analyst decided (scripted): case-ato-001 CONFIRMED_FRAUD" in demo.stdout
    counted = re.findall(
        r'streamproc_feedback_received_total\{[^}]*method="FALLBACK"[^}]*\} ([0-9.]+)',
        demo.stdout,
    )
    assert sum(float(n) for n in counted) == 2, demo.stdout[-2000:]

    evaluation = run_there("python", "-m", "streamproc.tooling.evaluation")
    assert evaluation.returncode == 0, evaluation.stdout[-3000:] + evaluation.stderr[-3000:]
    assert (empty / "eval-results" / "report.md").is_file()
    installed = next(venv.glob("lib/python*/site-packages/streamproc"))
    assert not (installed / "data" / "eval" / "results").exists()  # nothing written there
