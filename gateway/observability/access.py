"""The access log (GATEWAY_ACCESS_LOG = off | stdout | stderr | a file path): one JSON line per
request, written by a thread so that a slow disk or a reader that stops never stalls the loop.

Per request (called by the Recorder at the end of the exchange) the line is encoded with orjson
and appended to a buffer; the buffer goes to the writer thread when it holds FLUSH_BYTES, or at
the next tick (every FLUSH_INTERVAL seconds, one timer per process). The thread's backlog is
bounded (MAX_PENDING bytes): when it is full, lines are dropped and counted (node memory,
`gateway_access_log_lines_total{result="dropped"}`) rather than held without bound or waited for.

A file is opened for appending (O_APPEND: several workers write whole lines to one file; each
write is one buffer of whole lines) and reopened on SIGHUP and SIGUSR1, so logrotate's
rename-then-signal works: lines written before the signal go to the renamed file, later ones to a
fresh file with the configured name.

Fields: time (UTC, ms), request_id, trace_id, client_ip, method, path (without the query string:
queries carry tokens and personal data too often to log by default), route, service, target,
status, bytes_in, bytes_out, duration (seconds, head to last byte), upstream_duration, and
upstream_error when an attempt failed.
"""
from __future__ import annotations

import logging
import os
import queue
import threading
import time
from typing import Any

import orjson

log = logging.getLogger("gateway.access")

FLUSH_BYTES = 64 * 1024
FLUSH_INTERVAL = 0.5
MAX_PENDING = 8 * 1024 * 1024     # bytes handed to the thread and not yet written

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
    """One per process; `__call__(ctx)` is the per-request entry (loop thread only)."""

    def __init__(self, dest: str, loop: Any = None) -> None:
        fd, owned = _open(dest)
        self.dest = dest
        self.buf: list[bytes] = []
        self.buf_bytes = 0
        self.dropped = 0
        self.written = 0
        self.counters: Any = None     # CounterArray [written, dropped] in node memory, set per runtime
        self._sec = -1
        self._sec_text = ""
        self.writer = _Writer(dest, fd, owned)
        self.writer.start()
        self.loop = loop
        self._timer: Any = None
        if loop is not None:
            self._timer = loop.call_later(FLUSH_INTERVAL, self._tick)

    # --- per request --------------------------------------------------------------------------------
    def __call__(self, ctx: Any) -> None:
        now = time.time()
        sec = int(now)
        if sec != self._sec:
            self._sec = sec
            self._sec_text = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(sec))
        tp = ctx.traceparent
        route = ctx.route
        target = ctx.upstream_target
        start = ctx.start
        up_start, up_end = ctx.upstream_start, ctx.upstream_end
        rec = {
            "time": f"{self._sec_text}.{int((now - sec) * 1000):03d}Z",
            "request_id": ctx.request_id.decode("ascii", "replace") if ctx.request_id else None,
            "trace_id": tp[3:35].decode("ascii", "replace") if tp else None,
            "client_ip": ctx.client_ip,
            "method": ctx.method.decode("latin-1") if ctx.method else None,
            "path": ctx.path.decode("utf-8", "backslashreplace") if ctx.path else None,
            "route": route.name if route is not None else None,
            "service": ctx.service.name if ctx.service is not None else None,
            "target": target.url if target is not None else None,
            "status": ctx.status or 499,
            "bytes_in": ctx.bytes_in,
            "bytes_out": ctx.bytes_out,
            "duration": round(time.monotonic() - start, 6) if start else None,
            "upstream_duration": round(up_end - up_start, 6) if up_start and up_end else None,
        }
        if ctx.upstream_error is not None:
            rec["upstream_error"] = ctx.upstream_error
        line = orjson.dumps(rec, option=orjson.OPT_APPEND_NEWLINE)
        self.buf.append(line)
        self.buf_bytes += len(line)
        if self.buf_bytes >= FLUSH_BYTES:
            self.flush()

    # --- buffer → thread -----------------------------------------------------------------------------
    def flush(self) -> None:
        if not self.buf:
            return
        lines = len(self.buf)
        data = b"".join(self.buf)
        self.buf = []
        self.buf_bytes = 0
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
        self.writer.q.put(_REOPEN)

    def close(self, timeout: float = 5.0) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self.flush()
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
