"""`python -m engine` runs the `iz-engine` command line (how engine.workers starts workers)."""

from engine.cli import main

raise SystemExit(main())
