"""`python -m gateway` is the `gateway` command.

Its first instruction holds the signals a serving gateway handles (gateway/signals.py): until the
event loop's handlers exist, a SIGHUP or SIGTERM waits instead of killing the process.
"""
from __future__ import annotations

from gateway.signals import block_startup_signals

block_startup_signals()

import sys  # noqa: E402 - after the block, on purpose

from gateway.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
