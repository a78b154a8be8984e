"""The signals a serving process handles, held (blocked) from its first instruction.

A process that has not installed its handlers yet gets the default action: SIGHUP, SIGTERM, SIGINT
and SIGUSR1 all terminate it. A deploy script that sends SIGHUP right after starting the gateway
(or an orchestrator that stops it while it is still importing) would kill it, or lose the request.
So `gateway` blocks them before anything else (gateway/__main__.py, cli.main) and unblocks them
once its event loop's handlers exist: a signal that arrived meanwhile stays pending and is handled
then, so a reload asked for during start-up is applied and a stop is a clean drain.

Workers inherit exactly this mask from the supervisor (a blocked mask survives exec, see
`child_mask`), and unblock it the same way once their own handlers are installed.

Only `signal` is imported here: this module runs before the rest of the command is imported.
"""
from __future__ import annotations

import signal

# SIGUSR1: reserved for reopening log files (nginx's meaning); it must never kill the process.
STARTUP_SIGNALS = frozenset({signal.SIGHUP, signal.SIGTERM, signal.SIGINT, signal.SIGUSR1})


def block_startup_signals() -> set[int | signal.Signals]:
    """Hold STARTUP_SIGNALS (pending, not lost) until `unblock_startup_signals()`; returns the
    previous mask."""
    return signal.pthread_sigmask(signal.SIG_BLOCK, STARTUP_SIGNALS)


def unblock_startup_signals() -> None:
    """Deliver whatever arrived while they were held: call once the handlers are installed."""
    signal.pthread_sigmask(signal.SIG_UNBLOCK, STARTUP_SIGNALS)


def child_mask() -> None:
    """In a spawned worker before exec: exactly STARTUP_SIGNALS blocked, nothing else.

    Whatever else the parent happened to block is not inherited (a worker with, say, SIGCHLD
    blocked would behave differently from one started by hand), and the worker's own start-up is
    covered from its first instruction: it unblocks them once its loop handles them."""
    signal.pthread_sigmask(signal.SIG_SETMASK, STARTUP_SIGNALS)
