"""`python -m streamproc` is the `streamproc` command."""

from streamproc.cli.main import main

raise SystemExit(main())
