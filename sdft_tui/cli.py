"""``python -m sdft_tui.cli`` is ``sdft``.

The one command line lives in :mod:`engine.cli` (the console script points there): it opens
the wizard and the dashboard from this package when asked, and runs every other command
without importing Textual. This module stays so older scripts and ``torchrun -m
sdft_tui.cli`` keep working.
"""

from __future__ import annotations

import sys

from engine.cli import main

__all__ = ["main"]

if __name__ == "__main__":
    sys.exit(main())
