"""``python -m servekit``: the command line (see servekit.cli)."""

from servekit.cli import main

main()
