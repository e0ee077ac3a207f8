"""`python -m nanoseek ...`: the same as the `nanoseek` command."""

from nanoseek.cli import main

raise SystemExit(main())
