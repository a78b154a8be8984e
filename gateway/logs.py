"""Logging to stderr: one line per event.

Format: `2026-01-31T12:00:00.123Z gateway[1234] INFO worker: listening on 0.0.0.0:8080`.
The level comes from GATEWAY_LOG_LEVEL (debug | info | warning | error; default info). Multi-line
messages and tracebacks are folded onto one line (newlines shown as `\\n`) so that a log shipper
that splits on newlines never tears an event apart.
"""
from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Mapping

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
