"""What the `gateway` command and the supervisor share: the one-line error printer, the uvloop
runner, and the variables a supervisor passes to the workers it spawns.

Its own module so that imports point one way (cli → supervisor → process), as ARCHITECTURE.md
promises: the supervisor needs these, and the command needs the supervisor.
"""
from __future__ import annotations

import asyncio
import sys
from typing import Any

# Internal (no GATEWAY_ prefix: not user settings), set by the supervisor for each worker:
BOOT_CONFIG_ENV = "_GATEWAY_BOOT_CONFIG"       # the last-valid-config snapshot to boot from


def err(line: str) -> None:
    print(f"gateway: {line}", file=sys.stderr, flush=True)


def run_loop(coro: Any) -> int:
    """Run a coroutine on a fresh uvloop loop (the data plane is written for uvloop).

    Every process's loop (a lone worker, the supervisor, a supervised worker, the demo) runs here,
    so here it gets the exception handler that logs an escaped exception as one line, rate-limited
    (gateway/logs.py), instead of asyncio's multi-line traceback per occurrence.
    """
    import uvloop

    from gateway.logs import LoopExceptionReporter
    from gateway.worker import raise_nofile_limit

    raise_nofile_limit()
    loop = uvloop.new_event_loop()
    reporter = LoopExceptionReporter()
    loop.set_exception_handler(reporter)
    asyncio.set_event_loop(loop)
    try:
        return int(loop.run_until_complete(coro))
    finally:
        try:
            loop.run_until_complete(loop.shutdown_asyncgens())
        finally:
            reporter.flush()
            loop.close()
