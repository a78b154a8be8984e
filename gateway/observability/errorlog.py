"""The error log: one line per failed exchange, nginx's error.log for the data plane.

Every exchange ends in the Recorder (recorder.pyx, `observe`), including the requests refused
before they became one (a head the parser or a limit refused: downstream.pyx's `_refused` builds a
context for them and hands it over the same way). The Recorder calls `report()` only when the
outcome may be a failure (a C table of statuses, or an upstream error): a successful request pays
one comparison. `report()` decides, writes the line on the `gateway.error` logger (the process's
log, stderr) and, for a request the data plane refused as malformed, the audit record (SPEC §7).

What counts as failed, and at which level:
- WARNING: an upstream attempt that failed (kind `upstream_connect`, `upstream_timeout`,
  `upstream_reset`, `upstream_protocol`; with status 502/504, or the status already sent when the
  response was cut), and every 5xx the gateway answered itself (503 no target, 500...);
- INFO (the client's fault, as nginx logs them): 400, 408, 413, 414 and 431 from the data plane,
  its 501/505 for a Transfer-Encoding or HTTP version it does not support, and `client_closed`
  (the client left before any byte of the answer: 499 in the metrics).
Refusals by policy (401, 403, 429, a filter's 4xx) and 404/405 are not failures of the exchange:
the access log and the audit log have them.

Line: `failed exchange: request_id=... status=502 kind=upstream_connect method=GET path=/a
route=api service=up target=http://10.0.0.5:80 client=10.0.0.1 duration=0.003012
upstream_duration=0.002981 detail="The upstream refused the connection."` (path without the
query string; bytes outside printable ASCII escaped; duration in seconds, `-` when unknown).

Rate limited, so an attack cannot flood the log: at most MAX_LINES lines per WINDOW seconds per
process; the rest are counted and one line says how many were left out when the window ends
(a single timer, armed only while lines are being suppressed). Counts go to node memory
(`gateway_error_log_lines_total{result="logged"|"suppressed"}`).
"""
from __future__ import annotations

import logging
import time
from typing import Any

log = logging.getLogger("gateway.error")

WINDOW = 10.0          # seconds
MAX_LINES = 100        # lines per window per process
PATH_MAX = 200         # characters of the path written

# Statuses the data plane answers for a client's protocol error (INFO). The Recorder's C table
# (recorder.pyx, Recorder.__init__) holds these, 499 and 500..599.
CLIENT_ERRORS = frozenset((400, 408, 413, 414, 431))

_PRINTABLE = bytes(range(0x20, 0x7f))


def _text(value: Any, limit: int = PATH_MAX) -> str:
    """A bytes or str field as one token: printable ASCII kept, anything else escaped."""
    if value is None:
        return "-"
    if isinstance(value, str):
        value = value.encode("utf-8", "replace")
    value = bytes(value[:limit])
    if value.translate(None, _PRINTABLE) or b" " in value or b'"' in value:
        out = "".join(chr(b) if 0x21 <= b < 0x7f and b not in (0x22, 0x5c) else f"\\x{b:02x}" for b in value)
    else:
        out = value.decode("ascii")
    return out or "-"


def _secs(v: float) -> str:
    return f"{v:.6f}" if v > 0.0 else "-"


class ErrorLog:
    """One per process (kept across reloads, so the rate limit sees every runtime's failures)."""

    def __init__(self, *, max_lines: int = MAX_LINES, window: float = WINDOW, loop: Any = None,
                 clock: Any = time.monotonic, audit_malformed: bool = True) -> None:
        self.max_lines = max_lines
        self.window = window
        self.loop = loop
        self.clock = clock
        self.counters: Any = None       # CounterArray [logged, suppressed] in node memory, per runtime
        self.audit_malformed = audit_malformed
        self._start = -1e18
        self._lines = 0
        self._suppressed = 0
        self._timer: Any = None
        from gateway.http import replies

        # The data plane's own refusals of malformed requests (audited as `request_rejected`).
        self._malformed = {id(r): r for r in (
            replies.BAD_REQUEST, replies.UPGRADE_REFUSED, replies.AMBIGUOUS_FRAMING, replies.BAD_HOST,
            replies.BAD_TARGET, replies.CHUNK_LINE_TOO_LONG, replies.URI_TOO_LONG, replies.HEADERS_TOO_LARGE,
            replies.TE_NOT_IMPLEMENTED, replies.VERSION_NOT_SUPPORTED)}

    # --- what failed ------------------------------------------------------------------------------
    def classify(self, ctx: Any, status: int) -> tuple[str, int] | None:
        """(kind, level) of a failed exchange, None for one that did not fail."""
        err = ctx.upstream_error
        if err is not None:
            return "upstream_" + err, logging.WARNING
        if ctx.status == 0:
            return "client_closed", logging.INFO
        reply = ctx.local_reply
        if reply is None:
            return None         # the upstream's own answer, whatever its status
        if status in CLIENT_ERRORS or self._malformed.get(id(reply)) is reply:
            return reply.code, logging.INFO     # (501/505 too: an unsupported framing or version)
        if status >= 500:
            return reply.code, logging.WARNING
        return None

    def report(self, ctx: Any, status: int) -> None:
        """Called by the Recorder for an exchange that may have failed (see the module docstring)."""
        found = self.classify(ctx, status)
        if found is None:
            return
        kind, level = found
        reply = ctx.local_reply
        if self.audit_malformed and reply is not None and self._malformed.get(id(reply)) is reply:
            self._audit(ctx, reply)
        if not log.isEnabledFor(level):
            return
        if not self._admit():
            return
        log.log(level, "%s", self.line(ctx, status, kind))

    def line(self, ctx: Any, status: int, kind: str) -> str:
        route = ctx.route
        service = ctx.service
        target = ctx.upstream_target
        start = ctx.start
        up = ctx.upstream_end - ctx.upstream_start if ctx.upstream_start > 0.0 and ctx.upstream_end > 0.0 else 0.0
        reply = ctx.local_reply
        detail = f' detail="{reply.message}"' if reply is not None and reply.message else ""
        reason = ctx.upstream_reason        # a failed connect's own why (TLS verify, refused: pool.pyx)
        if reason:
            text = str(reason)[:PATH_MAX]
            text = "".join(c if 0x20 <= ord(c) < 0x7f and c not in '"\\' else f"\\x{ord(c):02x}" for c in text)
            detail += f' reason="{text}"'
        return (f"failed exchange: request_id={_text(ctx.request_id)} status={status} kind={kind}"
                f" method={_text(ctx.method, 16)} path={_text(ctx.path)}"
                f" route={_text(getattr(route, 'name', None))} service={_text(getattr(service, 'name', None))}"
                f" target={_text(getattr(target, 'url', None))} client={_text(ctx.client_ip)}"
                f" duration={_secs(time.monotonic() - start if start > 0.0 else 0.0)}"
                f" upstream_duration={_secs(up)}{detail}")

    # --- the rate limit ---------------------------------------------------------------------------
    def _admit(self) -> bool:
        now = self.clock()
        if now - self._start >= self.window:
            self._end_window()
            self._start = now
        if self._lines < self.max_lines:
            self._lines += 1
            self._count(0)
            return True
        self._suppressed += 1
        self._count(1)
        if self._timer is None and self.loop is not None and not self.loop.is_closed():
            self._timer = self.loop.call_later(max(self.window - (now - self._start), 0.0), self._window_over)
        return False

    def _count(self, i: int) -> None:
        c = self.counters
        if c is not None:
            c.inc(i, 1)

    def _window_over(self) -> None:
        self._timer = None
        self._end_window()
        self._start = -1e18

    def _end_window(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._suppressed:
            log.warning("failed exchanges: %d more not logged in the last %g s (at most %d lines per %g s "
                        "per worker; gateway_error_log_lines_total counts them)",
                        self._suppressed, self.window, self.max_lines, self.window)
        self._lines = 0
        self._suppressed = 0

    def flush(self) -> None:
        """Write the pending suppression count (at exit)."""
        self._end_window()

    # --- the audit record of a malformed request ----------------------------------------------------
    @staticmethod
    def _audit(ctx: Any, reply: Any) -> None:
        from gateway.security.audit import audit

        route = ctx.route
        audit("request_rejected", request_id=ctx.request_id, client_ip=ctx.client_ip, consumer=ctx.consumer_id,
              route=getattr(route, "name", None), status=reply.status, reason=reply.code, message=reply.message)


_process_log: ErrorLog | None = None


def process_error_log(loop: Any) -> ErrorLog:
    """This process's error log (one however many runtimes reloads build)."""
    global _process_log
    if _process_log is None:
        _process_log = ErrorLog(loop=loop)
    elif _process_log.loop is None and loop is not None:
        _process_log.loop = loop
    return _process_log


def close_process_error_log() -> None:
    global _process_log
    if _process_log is not None:
        _process_log.flush()
        _process_log = None
