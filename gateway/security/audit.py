"""The audit log (SPEC §7, GATEWAY_AUDIT_LOG): `audit(event, **fields)` from any feature.

One JSON line per record (orjson): `time`, `event`, `request_id`, `client_ip`, `consumer`, `route`,
`details`. Fields other than those five go into `details`. Callers pass fingerprints
(`apikeys.fingerprint`), never a secret, and never a query string.

Never stalls the loop: a record is encoded on the caller's thread and handed to a bounded queue
(MAX_QUEUED records); one daemon thread writes it to stdout, stderr or the file (opened for
append). A full queue (a destination that does not keep up: a stuck pipe, a slow disk) drops the
record and counts it in `dropped`, which GET /health-style callers and tests read.

Events written by this package: auth_failure, revoked_token, key_created, key_revoked,
token_revoked, token_issued, request_rejected. Other features call `audit("admin_change", ...)`
for their admin writes (breakers, limits, discovery); the rate-limit filter writes sampled
`rate_limited` events (gateway/filters/ratelimit.py).
"""
from __future__ import annotations

import datetime
import os
import queue
import sys
import threading
from typing import Any

import orjson

MAX_QUEUED = 10_000
_TOP = ("request_id", "client_ip", "consumer", "route")


class AuditLog:
    def __init__(self, destination: str = "stderr", max_queued: int = MAX_QUEUED) -> None:
        self.destination = destination
        self.dropped = 0
        self.written = 0
        self._queue: queue.Queue[bytes] = queue.Queue(max_queued)
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._reopen = threading.Event()

    def record(self, event: str, fields: dict[str, Any]) -> None:
        if self.destination == "off":
            return
        out: dict[str, Any] = {
            "time": datetime.datetime.now(datetime.UTC).isoformat(timespec="milliseconds"),
            "event": event,
        }
        for k in _TOP:
            v = fields.pop(k, None)
            out[k] = v.decode("latin-1") if isinstance(v, bytes) else v
        out["details"] = fields
        try:
            line = orjson.dumps(out, default=str) + b"\n"
        except TypeError:
            line = orjson.dumps({**out, "details": repr(fields)}) + b"\n"
        try:
            self._queue.put_nowait(line)
        except queue.Full:
            self.dropped += 1
            return
        if self._thread is None:
            self._start()

    def _start(self) -> None:
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._write_loop, name="gateway-audit", daemon=True)
                self._thread.start()

    def _write_loop(self) -> None:
        dest = self.destination
        if dest == "stdout":
            fd, own = sys.stdout.fileno(), False
        elif dest == "stderr":
            fd, own = sys.stderr.fileno(), False
        else:
            fd, own = os.open(dest, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640), True
        try:
            while True:
                line = self._queue.get()
                batch = [line]
                while len(batch) < 256:
                    try:
                        batch.append(self._queue.get_nowait())
                    except queue.Empty:
                        break
                if own and self._reopen.is_set():
                    self._reopen.clear()
                    fd = self._open_again(dest, fd)
                data = b"".join(batch)
                while data:
                    n = os.write(fd, data)
                    data = data[n:]
                self.written += sum(1 for b in batch if b)
        except OSError:
            self.dropped += self._queue.qsize()
        finally:
            if own:
                os.close(fd)

    def reopen(self) -> None:
        """SIGUSR1 / SIGHUP (logrotate's rename-then-signal): a file destination is opened again
        under its name before the next records are written. Before the first record nothing is
        open yet: the file is opened then anyway."""
        if self.destination in ("off", "stdout", "stderr") or self._thread is None:
            return
        self._reopen.set()
        try:
            self._queue.put_nowait(b"")     # wakes the writer (a full queue means it is awake)
        except queue.Full:
            pass

    @staticmethod
    def _open_again(dest: str, fd: int) -> int:
        try:
            new = os.open(dest, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
        except OSError as exc:
            import logging

            logging.getLogger("gateway.audit").error("audit log: reopen failed, still writing to the old file: %s",
                                                     exc.strerror)
            return fd
        os.close(fd)
        return new

    def flush(self, timeout: float = 2.0) -> None:
        """Wait (bounded) until the queue is empty: tests and shutdown."""
        import time

        end = time.monotonic() + timeout
        while not self._queue.empty() and time.monotonic() < end:
            time.sleep(0.01)


_log = AuditLog("stderr")      # SPEC §2 default, until configure() applies Settings.audit_log


def configure(destination: str) -> AuditLog:
    """Set the process's audit destination (from Settings.audit_log); returns the log."""
    global _log
    if destination != _log.destination:
        _log = AuditLog(destination)
    return _log


def current() -> AuditLog:
    return _log


def audit(event: str, **fields: Any) -> None:
    """Write one audit record (see the module docstring for the fields)."""
    _log.record(event, fields)
