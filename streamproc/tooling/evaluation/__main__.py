"""`python -m streamproc.tooling.evaluation`: the brief evaluation's command line (cli)."""

from __future__ import annotations

import sys

from streamproc.tooling.evaluation.cli import main

if __name__ == "__main__":
    sys.exit(main())
