"""Logging to stderr: one line per event.

Format: `2026-01-31T12:00:00.123Z gateway[1234] INFO worker: listening on 0.0.0.0:8080`.
The level comes from GATEWAY_LOG_LEVEL (debug | info | warning | error; default info). Multi-line
messages and tracebacks are folded onto one line (newlines shown as `\\n`) so that a log shipper
that splits on newlines never tears an event apart.

Exceptions that escape into an event loop (a protocol or loop callback that raised, a task nobody
awaited) go to LoopExceptionReporter, which process.run_loop installs on every process's loop:
asyncio's default handler printed a multi-line traceback for each one, and a fault repeated per
request filled the log (20 Upgrade requests gave 200 lines). The reporter writes one line per
(exception type, place), then counts repeats of it for `window` seconds and writes one
"N more suppressed" line; the traceback is kept, folded onto the line, at debug level only.
"""
from __future__ import annotations

import asyncio
import logging
import os
import re
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}


class LogLevelError(ValueError):
    """GATEWAY_LOG_LEVEL holds something else than one of LEVELS."""


class OneLineFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        t = time.gmtime(record.created)
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", t) + f".{int(record.msecs):03d}Z"
        name = record.name[len("gateway."):] if record.name.startswith("gateway.") else record.name
        msg = record.getMessage()
        if record.exc_info:
            msg = f"{msg} {self.formatException(record.exc_info)}"
        msg = msg.replace("\r", "\\r").replace("\n", "\\n")
        return f"{stamp} gateway[{record.process}] {record.levelname} {name}: {msg}"


def parse_level(environ: Mapping[str, str]) -> int:
    raw = environ.get("GATEWAY_LOG_LEVEL", "info").strip().lower()
    try:
        return LEVELS[raw]
    except KeyError:
        raise LogLevelError(
            f"GATEWAY_LOG_LEVEL: expected one of debug, info, warning, error, got {raw!r}"
        ) from None


def setup_logging(environ: Mapping[str, str] | None = None) -> None:
    """Configure the root `gateway` logger; raises LogLevelError on a bad GATEWAY_LOG_LEVEL."""
    level = parse_level(os.environ if environ is None else environ)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(OneLineFormatter())
    root = logging.getLogger("gateway")
    root.handlers[:] = [handler]
    root.setLevel(level)
    root.propagate = False
    # asyncio logs on its own logger ("Unhandled error in exception handler", slow-callback
    # warnings in debug mode): same stream, same one-line format, and never below WARNING unless
    # the gateway itself is at debug.
    aio = logging.getLogger("asyncio")
    aio.handlers[:] = [handler]
    aio.setLevel(logging.DEBUG if level <= logging.DEBUG else max(level, logging.WARNING))
    aio.propagate = False


# --- exceptions escaping into an event loop ---------------------------------------------------

_ADDRESS = re.compile(r" at 0x[0-9a-fA-F]+")


def _short(text: str, limit: int = 160) -> str:
    text = _ADDRESS.sub("", text).replace("\r", " ").replace("\n", " ")
    return text if len(text) <= limit else text[:limit] + "..."


def _safe_repr(obj: Any) -> str:
    try:
        return _short(repr(obj))
    except Exception:  # noqa: BLE001 - a repr that raises must not take the reporter down
        return f"<{type(obj).__name__}>"


def _raised_at(exc: BaseException) -> str:
    """file:line in function of the innermost frame: where it was raised."""
    tb = exc.__traceback__
    if tb is None:
        return ""
    while tb.tb_next is not None:
        tb = tb.tb_next
    code = tb.tb_frame.f_code
    return f"{os.path.basename(code.co_filename)}:{tb.tb_lineno} in {code.co_name}"


def _running(context: Mapping[str, Any]) -> str:
    """What the loop was running: the protocol, callback or task of the handler context."""
    if "protocol" in context:
        return f"protocol {type(context['protocol']).__qualname__}"
    for key in ("task", "future"):
        if key in context:
            fut = context[key]
            get_coro = getattr(fut, "get_coro", None)
            coro = get_coro() if callable(get_coro) else None
            name = getattr(coro, "__qualname__", None)
            what = "task" if coro is not None else key
            return f"{what} {name}()" if name else f"{what} {_safe_repr(fut)}"
    if "handle" in context:
        # "<Handle Worker._tick>" on uvloop, "<Handle Worker._tick() at x.py:12>" on asyncio
        return "callback " + _safe_repr(context["handle"]).strip("<>").removeprefix("Handle ").removeprefix(
            "TimerHandle ")
    if "transport" in context:
        return f"transport {type(context['transport']).__qualname__}"
    return ""


@dataclass
class _Seen:
    start: float
    text: str
    suppressed: int = 0
    timer: asyncio.TimerHandle | None = None


class LoopExceptionReporter:
    """A loop exception handler (loop.set_exception_handler) that writes one line per event.

    The first occurrence of an (exception type, place) is logged at ERROR; repeats within `window`
    seconds are only counted, and one line "..., N more suppressed in the last 10 s" is written
    when the window ends (or at flush(), which run_loop calls before the loop closes). At debug
    level the line carries the traceback, folded onto it by OneLineFormatter.
    """

    MAX_KEYS = 256   # distinct places remembered; a bound whoever fills it

    def __init__(self, logger: logging.Logger | None = None, *, window: float = 10.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.log = logger or logging.getLogger("gateway.loop")
        self.window = window
        self.clock = clock
        self._seen: dict[tuple[str, str], _Seen] = {}

    def __call__(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        try:
            self._report(loop, context)
        except Exception:  # noqa: BLE001 - the last resort must not raise into the loop
            print(f"gateway: loop error (and the reporter failed): {_short(str(context.get('message')))}",
                  file=sys.stderr, flush=True)

    def _report(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        exc = context.get("exception")
        message = _short(str(context.get("message") or ""))
        running = _running(context)
        if isinstance(exc, BaseException):
            kind = type(exc).__name__
            raised = _raised_at(exc)
            where = "; ".join(p for p in (f"at {raised}" if raised else "", running) if p)
            text = f"{kind}: {_short(str(exc))} ({where})" if where else f"{kind}: {_short(str(exc))}"
            key = (kind, where)
        else:
            kind, where = "", running
            text = f"{message} ({running})" if running else message
            key = ("", f"{message}|{running}")
        now = self.clock()
        seen = self._seen.get(key)
        if seen is not None and now - seen.start < self.window:
            seen.suppressed += 1
            if seen.timer is None and not loop.is_closed():
                seen.timer = loop.call_later(self.window - (now - seen.start), self._end_window, key)
            return
        if seen is not None:
            self._end_window(key)
        self._remember(key, _Seen(now, text))
        exc_info = None
        if self.log.isEnabledFor(logging.DEBUG) and isinstance(exc, BaseException):
            exc_info = (type(exc), exc, exc.__traceback__)
        detail = f"; asyncio: {message}" if message and exc is not None else ""
        self.log.error("unexpected %s%s", text, detail, exc_info=exc_info)

    def _remember(self, key: tuple[str, str], seen: _Seen) -> None:
        if len(self._seen) >= self.MAX_KEYS:
            # forget the oldest window that has nothing left to report
            for k, s in sorted(self._seen.items(), key=lambda kv: kv[1].start):
                if s.timer is None and not s.suppressed:
                    del self._seen[k]
                    break
            else:
                self._end_window(min(self._seen, key=lambda k: self._seen[k].start))
        self._seen[key] = seen

    def _end_window(self, key: tuple[str, str]) -> None:
        seen = self._seen.pop(key, None)
        if seen is None:
            return
        if seen.timer is not None:
            seen.timer.cancel()
        if seen.suppressed:
            self.log.error("unexpected %s: %d more suppressed in the last %g s",
                           seen.text, seen.suppressed, self.window)

    def flush(self) -> None:
        """Write the pending suppression counts (before the loop closes)."""
        for key in list(self._seen):
            self._end_window(key)
