"""The access log (GATEWAY_ACCESS_LOG = off | stdout | stderr | a file path): one JSON line per
request, written by a thread so that a slow disk or a reader that stops never stalls the loop.

Per request the Recorder (recorder.pyx, at the end of the exchange) formats the line in C into a
LineBuffer (the route and target parts JSON-encoded once at config load, with orjson); the buffer
goes to the writer thread when it holds FLUSH_BYTES, or at the next tick (every FLUSH_INTERVAL
seconds, one timer per process). The thread's backlog is
bounded (MAX_PENDING bytes): when it is full, lines are dropped and counted (node memory,
`gateway_access_log_lines_total{result="dropped"}`) rather than held without bound or waited for.

A file is opened for appending (O_APPEND: several workers write whole lines to one file; each
write is one buffer of whole lines) and reopened on SIGHUP and SIGUSR1, so logrotate's
rename-then-signal works: lines written before the signal go to the renamed file, later ones to a
fresh file with the configured name.

Who writes: a regular file is appended to by the loop itself, 64 KiB at a time (nginx's way: the
page cache takes 64 KiB in ~40 us, 0.2 us a line), because handing every buffer to a Python thread
cost 1.2x the CPU of a request over TCP (the GIL's hand-offs; bench/results/observability.md).
A write that ever takes longer than STALL moves that log to the writer thread for good, so a disk
that hangs costs the loop one slow write, never one per flush. stdout and stderr (pipes, terminals:
a reader that stops would block a write indefinitely) always go through the writer thread.

Fields: time (UTC, ms), request_id, trace_id, client_ip, method, path (without the query string:
queries carry tokens and personal data too often to log by default), route, service, target,
status, bytes_in, bytes_out, duration (seconds, head to last byte), upstream_duration, and
upstream_error when an attempt failed.
"""
from __future__ import annotations

import logging
import os
import queue
import stat
import threading
import time
from typing import Any

log = logging.getLogger("gateway.access")

FLUSH_BYTES = 64 * 1024
FLUSH_INTERVAL = 0.5
MAX_PENDING = 8 * 1024 * 1024     # bytes handed to the thread and not yet written
STALL = 0.05                      # seconds: a file append slower than this moves the log to the thread

_REOPEN = object()
_STOP = object()


class AccessLogError(Exception):
    """The destination cannot be opened (the message names GATEWAY_ACCESS_LOG)."""


def _open(dest: str) -> tuple[int, bool]:
    """(fd, owned): stdout/stderr are the process's own (never closed), a path is opened here."""
    if dest == "stdout":
        return 1, False
    if dest == "stderr":
        return 2, False
    try:
        return os.open(dest, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o640), True
    except OSError as exc:
        raise AccessLogError(f"GATEWAY_ACCESS_LOG: cannot open {dest!r} for appending: {exc.strerror}") from None


class _Writer(threading.Thread):
    """Writes whole buffers in order; reopens between two writes when asked."""

    def __init__(self, dest: str, fd: int, owned: bool) -> None:
        super().__init__(name="gateway-access-log", daemon=True)
        self.dest, self.fd, self.owned = dest, fd, owned
        self.q: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self.lock = threading.Lock()
        self.pending = 0        # bytes queued and not yet written (MAX_PENDING bounds it)
        self.failed = 0         # lines lost to write errors (disk full...), counted as dropped

    def run(self) -> None:
        while True:
            item = self.q.get()
            if item is _STOP:
                break
            if item is _REOPEN:
                self._reopen()
                continue
            data, lines = item
            try:
                view = memoryview(data)
                while view:
                    n = os.write(self.fd, view)
                    view = view[n:]
            except OSError as exc:
                self.failed += lines
                log.warning("access log: write to %s failed (%s): %d lines lost", self.dest, exc.strerror, lines)
            with self.lock:
                self.pending -= len(data)
        if self.owned:
            os.close(self.fd)

    def _reopen(self) -> None:
        if not self.owned:
            return
        try:
            fd, _ = _open(self.dest)
        except AccessLogError as exc:
            log.error("access log: reopen failed, still writing to the old file: %s", exc)
            return
        os.close(self.fd)
        self.fd = fd


class AccessLog:
    """One per process. The Recorder (recorder.pyx) formats each request's line into `lines` and
    calls `flush()` once `flush_bytes` are buffered; a timer flushes the rest every FLUSH_INTERVAL."""

    def __init__(self, dest: str, loop: Any = None) -> None:
        from .recorder import LineBuffer

        fd, owned = _open(dest)
        self.dest = dest
        self.lines = LineBuffer()
        self.flush_bytes = FLUSH_BYTES
        self.dropped = 0
        self.written = 0
        self.counters: Any = None     # CounterArray [logged, dropped] in node memory, set per runtime
        # A regular file is appended to from the loop itself (see the module docstring); anything
        # else (a pipe, a terminal) goes through the writer thread.
        self.fd, self.owned = fd, owned
        self.direct = owned and stat.S_ISREG(os.fstat(fd).st_mode)
        self.writer = _Writer(dest, fd, owned)
        if not self.direct:
            self.writer.start()
        self.loop = loop
        self._timer: Any = None
        if loop is not None:
            self._timer = loop.call_later(FLUSH_INTERVAL, self._tick)

    # --- buffer → thread -----------------------------------------------------------------------------
    def flush(self) -> None:
        lines = self.lines.lines
        if not lines:
            return
        data = self.lines.take()
        if self.direct:
            self._append(data, lines)
            return
        w = self.writer
        with w.lock:
            fits = w.pending + len(data) <= MAX_PENDING
            if fits:
                w.pending += len(data)
        if fits:
            w.q.put((data, lines))
            self._count(lines, 0)
        else:
            self._count(0, lines)

    def _append(self, data: bytes, lines: int) -> None:
        """One append to a regular file, from the loop: the page cache takes it in tens of
        microseconds. If the disk ever holds a write longer than STALL (a hung network file
        system, dirty-page throttling), the log moves to the writer thread for good."""
        started = time.monotonic()
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(self.fd, view):]
        except OSError as exc:
            log.warning("access log: write to %s failed (%s): %d lines lost", self.dest, exc.strerror, lines)
            self._count(0, lines)
            return
        self._count(lines, 0)
        took = time.monotonic() - started
        if took > STALL:
            log.warning("access log: a write to %s took %.0f ms; writing from a thread from now on",
                        self.dest, took * 1000)
            self.direct = False
            self.writer.fd = self.fd
            self.writer.start()

    def _count(self, written: int, dropped: int) -> None:
        failed, self.writer.failed = self.writer.failed, 0   # lines the thread could not write
        dropped += failed
        self.written += written
        self.dropped += dropped
        c = self.counters
        if c is not None:
            if written:
                c.inc(0, written)
            if dropped:
                c.inc(1, dropped)

    def _tick(self) -> None:
        try:
            self.flush()
        finally:
            if self.loop is not None and not self.loop.is_closed():
                self._timer = self.loop.call_later(FLUSH_INTERVAL, self._tick)

    def reopen(self) -> None:
        """SIGHUP / SIGUSR1: what is buffered goes to the current file, later lines to a new one."""
        self.flush()
        if self.direct:
            try:
                fd, _ = _open(self.dest)
            except AccessLogError as exc:
                log.error("access log: reopen failed, still writing to the old file: %s", exc)
                return
            os.close(self.fd)
            self.fd = self.writer.fd = fd
            return
        self.writer.q.put(_REOPEN)

    def close(self, timeout: float = 5.0) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self.flush()
        if self.direct:
            if self.owned:
                os.close(self.fd)
            return
        self.writer.q.put(_STOP)
        self.writer.join(timeout)


_process_log: AccessLog | None = None


def process_access_log(dest: str, loop: Any) -> AccessLog | None:
    """This process's access log (one however many runtimes reloads build), or None when off."""
    global _process_log
    if dest == "off":
        return None
    if _process_log is None or _process_log.dest != dest:
        _process_log = AccessLog(dest, loop)
    return _process_log


def reopen_process_log() -> None:
    if _process_log is not None:
        _process_log.reopen()


def close_process_log() -> None:
    global _process_log
    if _process_log is not None:
        _process_log.close()
        _process_log = None
