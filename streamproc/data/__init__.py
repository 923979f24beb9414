"""The data files the product reads at run time, shipped inside the package.

`schemas/`, `topics/`, `prompts/` and `procedures/` (the sample procedures library)
here are links to the repository's top-level folders of the same names, and `eval/`
links to the evaluation's built-in labelled set in `tests/eval/`: those stay the one
source, and building the wheel copies them in (`tests/integration/test_packaging.py`
checks the wheel holds each file, byte for byte).
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path


def path(*parts: str) -> Path:
    """A data file or folder, as a path (the package is installed unzipped)."""
    root = resources.files(__name__)
    if not isinstance(root, Path):
        raise RuntimeError(f"streamproc's data must be on a file system, not in {root!r}")
    return root.joinpath(*parts)
