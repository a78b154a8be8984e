"""The signals a serving process handles, held (blocked) from its first instruction.

A process that has not installed its handlers yet gets the default action: SIGHUP, SIGTERM, SIGINT
and SIGUSR1 all terminate it (SIGQUIT dumps core). A deploy script that sends SIGHUP right after starting the gateway
(or an orchestrator that stops it while it is still importing) would kill it, or lose the request.
So `gateway` blocks them before anything else (gateway/__main__.py, cli.main) and unblocks them
once its event loop's handlers exist: a signal that arrived meanwhile stays pending and is handled
then, so a reload asked for during start-up is applied and a stop is a clean drain.

Workers inherit this mask from the supervisor, which blocks these signals around each spawn (a
blocked mask survives fork and exec), and unblock it the same way once their own handlers are
installed. At the end, before the handlers go, the mask is put back: a late signal is held until
the process exits instead of killing it half-way through its clean-up.

Only `signal` is imported here: this module runs before the rest of the command is imported.
"""
from __future__ import annotations

import signal

# SIGUSR1: reopen the log files (nginx's meaning); it must never kill the process. SIGQUIT: a
# graceful stop, as nginx's (its default action, a core dump, is never what an operator meant).
STARTUP_SIGNALS = frozenset({signal.SIGHUP, signal.SIGTERM, signal.SIGINT, signal.SIGUSR1, signal.SIGQUIT})


def block_startup_signals() -> set[int | signal.Signals]:
    """The process's first instruction: its mask becomes exactly STARTUP_SIGNALS, held (pending,
    not lost) until `unblock_startup_signals()`; returns the previous mask. Exactly: whatever else
    the launcher blocked is not kept, so the gateway and the workers it spawns (which inherit the
    mask) behave the same however they were started."""
    return signal.pthread_sigmask(signal.SIG_SETMASK, STARTUP_SIGNALS)


def current_mask() -> set[int | signal.Signals]:
    return signal.pthread_sigmask(signal.SIG_BLOCK, ())


def unblock_startup_signals() -> None:
    """Deliver whatever arrived while they were held: call once the handlers are installed."""
    signal.pthread_sigmask(signal.SIG_UNBLOCK, STARTUP_SIGNALS)

