"""AdminProtocol: one admin connection (gateway/admin/server.py's module docstring has the rules
it follows: flow control, head limits, deadlines, Host check, request-order replies).

Its own module so that the listener (AdminServer: accepting, the connection cap, fd exhaustion)
and the per-connection protocol each read as one job.
"""
from __future__ import annotations

import asyncio
import inspect
import ipaddress
import logging
from collections import deque
from collections.abc import Awaitable
from typing import TYPE_CHECKING

import httptools

from gateway.admin.api import (
    AdminRequest,
    AdminResponse,
    IPAddress,
    error_response,
    render,
)
from gateway.http.flow import PAUSE_CLOSING, PAUSE_PIPELINE, ReadGate

if TYPE_CHECKING:
    from gateway.admin.server import AdminServer

log = logging.getLogger("gateway.admin")


MAX_BODY = 1 << 20
MAX_PIPELINE = 8        # parsed requests waiting for their answer before parsing (and reading) stops
FEED_SLICE = 4096       # bytes handed to the parser at once: a full queue stops parsing within a slice
PAUSE_WRITING = 16      # a ReadGate reason of our own (flow.pyx uses 1-8): the transport is backed up

INTERNAL_ERROR = error_response(500, "internal_error", "the admin listener failed to answer")
BAD_REQUEST = error_response(400, "bad_request", "malformed HTTP request")
NO_UPGRADE = error_response(400, "bad_request", "the admin API does not switch protocols (Upgrade)")
NO_CONNECT = error_response(501, "not_implemented", "the admin API does not implement CONNECT")
HEADER_TIMEOUT = error_response(408, "request_timeout", "the request head was not received in time")
BODY_TIMEOUT = error_response(408, "request_timeout", "the request body stalled")
URI_TOO_LONG = error_response(414, "uri_too_long", "the request target is longer than allowed")
MISDIRECTED = error_response(421, "misdirected_request",
                             "the admin API does not answer for this Host (see GATEWAY_ADMIN_HOSTS)")
REPEATED_HOST = error_response(400, "bad_request", "the request has more than one Host field")
HEAD_TOO_LARGE = error_response(431, "request_header_fields_too_large", "the request head is larger than allowed")
BODY_TOO_LARGE = error_response(413, "body_too_large", "admin bodies are limited to 1 MiB")
# Raw head bytes allowed beyond GATEWAY_MAX_HEADER_BYTES + GATEWAY_MAX_URI_BYTES for the method,
# version, separators and CRLFs (on_header counts name + value + 4 per field).
HEAD_SLACK = 64
# After an error reply the connection is closed the nginx way (lingering close): our side is shut
# for writing, then what the client still sends is read and dropped for up to LINGER_TIME seconds
# or LINGER_BYTES bytes. Closing with its bytes unread would make the kernel answer with a reset,
# which may destroy the error reply before the client has read it.
LINGER_TIME = 2.0
LINGER_BYTES = 1 << 20

INF = float("inf")
# What the parse-side deadline of a connection is for.
K_NONE = 0      # no deadline: a request is being answered, or its body is complete
K_IDLE = 1      # waiting for the first byte of a head: close quietly when it passes
K_HEADER = 2    # a head has begun: 408 when it is not complete by the deadline (absolute)
K_BODY = 3      # a body is being read: 408 after that long without a body byte
K_CLOSING = 4   # closed by us: abort if the transport has not flushed and gone by the deadline


class _Rejected(Exception):
    """Raised in a parser callback to stop parsing at that byte; the reply ends the connection."""

    def __init__(self, response: AdminResponse) -> None:
        super().__init__(response.status)
        self.response = response


def _local_addresses(transport: asyncio.BaseTransport) -> frozenset[IPAddress]:
    sockname = transport.get_extra_info("sockname")
    try:
        ip = ipaddress.ip_address(sockname[0])
    except (TypeError, ValueError, IndexError):
        return frozenset()
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return frozenset({ip, ip.ipv4_mapped})
    return frozenset({ip})


class _Item:
    """One pipelined exchange waiting for its turn: a request to dispatch, or a reply already decided."""

    __slots__ = ("request", "response", "keep_alive", "head_only")

    def __init__(self, request: AdminRequest | None, response: AdminResponse | None, keep_alive: bool,
                 head_only: bool) -> None:
        self.request = request
        self.response = response
        self.keep_alive = keep_alive
        self.head_only = head_only


class AdminProtocol(asyncio.Protocol):
    """One admin connection. Attributes: per listener (server, app, loop), per connection
    (transport, parser, gate, held bytes, the queue), per request being parsed (url, headers, body).

    Flow control (the data plane's rule, gateway/http/downstream.pyx): nothing is read while
    replies are queued. Bytes read are handed to the parser a slice at a time; once MAX_PIPELINE
    parsed requests wait for their answer, parsing stops and the unparsed rest of that read is held
    with reading paused. Answers stop while the transport is above its write high-water mark
    (pause_writing), and reading stays paused until it drains (resume_writing). So a client that
    pipelines and never reads costs at most one read, MAX_PIPELINE requests and the transport's
    high-water mark, however long it goes on.

    Order: every reply, including the ones the listener decides itself (400 for garbage), goes
    through the one queue, so each complete request is answered, in order, before the error that
    ends the connection. No exception leaves a callback: a handler or a response that fails
    answers 500 (one log line), a failure of the listener itself aborts the connection (one line).
    """

    def __init__(self, server: AdminServer, over_capacity: bool = False) -> None:
        # per listener
        self.server = server
        self.over_capacity = over_capacity  # accepted beyond the cap: answered 503 and closed
        self.app = server.app
        assert server.loop is not None
        self.loop = server.loop
        self.ticker = server.ticker
        s = server.settings
        self.t_header = s.header_timeout
        self.t_body = s.body_timeout
        self.t_keepalive = s.keepalive_timeout
        self.lim_uri = s.max_uri_bytes
        self.lim_hbytes = s.max_header_bytes
        self.lim_headers = s.max_headers
        # per connection
        self.transport: asyncio.Transport | None = None
        self.gate: ReadGate | None = None
        self.parser = httptools.HttpRequestParser(self)
        self.held = b""             # read but not parsed yet; reading is paused while any is held
        self.held_pos = 0
        self.queue: deque[_Item] = deque()
        self.busy = False           # an async handler is answering the head of the queue
        self.write_paused = False
        self.closing = False
        self.rejected = False       # an error reply is queued: nothing more is parsed
        self.eof = False            # the client half-closed: close once every reply is out
        self.running = False        # _run() is on the stack (it is never re-entered)
        # Deadlines (loop.time() values) checked by the per-loop Ticker (gateway/http/flow.pyx):
        # late by at most its interval (0.5 s), never early, and no timer per request.
        self.p_kind = K_IDLE
        self.p_deadline = INF
        self.w_deadline = INF       # the client must drain our replies by then (set while paused)
        self.fresh = True           # no head begun yet on this connection
        self.lingering = 0          # > 0 while closing the nginx way: bytes left to read and drop
        self.local: frozenset[IPAddress] = frozenset()  # the address(es) this connection came in on
        self.peer: str | None = None    # the client's address (for allow-lists such as /metrics)
        # per request being parsed
        self.url = b""
        self.headers: dict[str, str] = {}
        self.raw_headers: list[tuple[bytes, bytes]] = []
        self.hosts: list[bytes] = []
        self.misdirected = False
        self.n_headers = 0
        self.h_bytes = 0
        self.p_raw = 0              # bytes fed since this head began (the backstop of the head limit)
        self.body = bytearray()

    # ------------------------------------------------------------------ transport callbacks
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        try:
            self.gate = ReadGate(self.transport)  # type: ignore[arg-type]
            self.local = _local_addresses(transport)
            peer = transport.get_extra_info("peername")
            self.peer = peer[0] if isinstance(peer, tuple) and peer else None
            # The first head must be complete within GATEWAY_HEADER_TIMEOUT of the accept (nginx's
            # client_header_timeout): a connection that never speaks holds a slot that long at most.
            self.p_deadline = self.loop.time() + self.t_header
            self.ticker.add(self)
            if self.over_capacity:
                self._reject(self.server.too_many)
                self._run()
        except Exception:  # noqa: BLE001 - nothing escapes a protocol callback
            self._fail("admin connection setup failed")

    def connection_lost(self, exc: Exception | None) -> None:
        self.closing = True
        self.transport = None
        self.queue.clear()
        self.held = b""
        self.ticker.discard(self)
        self.server.release(self)

    def pause_writing(self) -> None:
        # The client does not read as fast as we answer: stop answering and stop reading. If it
        # does not drain within GATEWAY_BODY_TIMEOUT, on_tick aborts the connection.
        self.write_paused = True
        self.w_deadline = self.loop.time() + self.t_body
        if self.gate is not None:
            self.gate.pause(PAUSE_WRITING)

    def resume_writing(self) -> None:
        self.write_paused = False
        self.w_deadline = INF
        try:
            if self.gate is not None:
                self.gate.resume(PAUSE_WRITING)
            self._run()
        except Exception:  # noqa: BLE001
            self._fail("admin connection failed")

    def data_received(self, data: bytes) -> None:
        if self.lingering:
            self.lingering -= min(len(data), self.lingering)
            if not self.lingering and self.transport is not None:
                self.transport.abort()
            return
        if self.closing or self.rejected:
            return
        if self.held_pos < len(self.held):
            self.held = self.held[self.held_pos:] + data
        else:
            self.held = data
        self.held_pos = 0
        try:
            self._run()
        except Exception:  # noqa: BLE001
            self._fail("admin connection failed")

    def eof_received(self) -> bool:
        # Half-closed (`printf '...' | nc`): the requests already sent are still answered; _run()
        # closes once the last reply is out. A request cut off by the EOF is never answered.
        self.eof = True
        if self.lingering:
            self.lingering = 0
            if self.transport is not None:
                self.transport.close()
            return True
        try:
            self._run()
        except Exception:  # noqa: BLE001
            self._fail("admin connection failed")
        # Over TLS there is no half-close (uvloop closes after a close_notify whatever we answer,
        # and logs a warning for True): replies already written are flushed, then it closes.
        return self.transport is None or self.transport.get_extra_info("sslcontext") is None

    def _fail(self, what: str) -> None:
        """A bug of the listener itself: one log line with the traceback, the connection aborted."""
        log.exception(what)
        self.closing = True
        self.queue.clear()
        if self.transport is not None:
            self.transport.abort()

    # ------------------------------------------------------------------ the driver
    def _run(self) -> None:
        """Answer what can be answered, parse what may be parsed, in that order, until neither can
        go on; then pause reading if unparsed bytes are held, else resume it."""
        if self.running or self.closing:
            return
        self.running = True
        try:
            while not self.closing:
                if self.queue and not self.busy and not self.write_paused:
                    self._answer(self.queue.popleft())
                elif self.held_pos < len(self.held) and len(self.queue) < MAX_PIPELINE:
                    self._feed_slice()
                else:
                    break
            if self.closing or self.gate is None:
                return
            if self.held_pos < len(self.held):
                self.gate.pause(PAUSE_PIPELINE)
                return
            self.held, self.held_pos = b"", 0
            self.gate.resume(PAUSE_PIPELINE)
            if not self.queue and not self.busy:
                if self.eof:
                    self._close()
                elif self.p_kind == K_NONE:
                    # Everything answered, no head begun: idle until the keep-alive deadline.
                    self.p_kind = K_IDLE
                    self.p_deadline = self.loop.time() + self.t_keepalive
        finally:
            self.running = False

    def on_tick(self, now: float) -> None:
        """The Ticker's call (every 0.5 s): act on a passed deadline."""
        if self.closing:
            if now >= self.p_deadline and self.transport is not None:
                # Closed by us, yet not gone: a lingering close ran out, or the client does not
                # read the last reply (close() would wait for the flush forever).
                self.lingering = 0
                self.transport.abort()
            return
        try:
            if now >= self.w_deadline:
                # Our replies have not drained for GATEWAY_BODY_TIMEOUT: the client stopped reading.
                self.closing = True
                if self.transport is not None:
                    self.transport.abort()
                return
            if now < self.p_deadline:
                return
            kind = self.p_kind
            if kind == K_IDLE:
                self._close()
            elif kind == K_HEADER or kind == K_BODY:
                if self.held_pos < len(self.held):
                    # The rest of that head or body is read and held by us (our queue is full):
                    # the wait is ours, not the client's.
                    self.p_deadline = now + (self.t_header if kind == K_HEADER else self.t_body)
                    return
                self.p_kind = K_NONE
                self._reject(HEADER_TIMEOUT if kind == K_HEADER else BODY_TIMEOUT)
                self._run()
        except Exception:  # noqa: BLE001
            self._fail("admin connection timer failed")

    def _feed_slice(self) -> None:
        end = self.held_pos + FEED_SLICE
        chunk = memoryview(self.held)[self.held_pos:end]
        self.held_pos = min(end, len(self.held))
        if self.p_kind == K_HEADER:
            self.p_raw += len(chunk)
        try:
            self.parser.feed_data(chunk)
        except httptools.HttpParserUpgrade:
            # (on_headers_complete refuses every Upgrade and CONNECT first; this is the backstop:
            # HttpParserUpgrade is no HttpParserError and would otherwise escape.)
            self._reject(NO_UPGRADE)
        except httptools.HttpParserError as exc:
            # httptools wraps an exception raised in a callback and chains the original.
            cause = exc.__cause__ or exc.__context__
            if isinstance(cause, _Rejected):
                self._reject(cause.response)
            elif isinstance(cause, Exception):
                log.error("admin request parsing failed", exc_info=cause)
                self._reject(INTERNAL_ERROR)
            else:
                self._reject(BAD_REQUEST)
            return
        # httptools keeps a field line to itself until it is complete, so on_header cannot see an
        # endless one: the head's raw bytes decide it, within a slice of crossing the limit.
        if self.p_kind == K_HEADER and self.p_raw > self.lim_hbytes + self.lim_uri + HEAD_SLACK:
            self._reject(HEAD_TOO_LARGE)

    def _reject(self, resp: AdminResponse) -> None:
        """Nothing more is parsed or read; `resp` is answered after the requests already complete."""
        if self.rejected or self.closing:
            return
        self.rejected = True
        self.held, self.held_pos = b"", 0
        if self.gate is not None:
            self.gate.pause(PAUSE_CLOSING)
        self.queue.append(_Item(None, resp, False, False))

    def _answer(self, item: _Item) -> None:
        if item.response is not None:
            self._send(item.response, item.keep_alive, item.head_only)
            return
        assert item.request is not None
        result = self.app.dispatch(item.request)
        if inspect.isawaitable(result):
            # An async handler: the only task, and only for handlers that wait on I/O.
            self.busy = True
            self.loop.create_task(self._finish(result, item))
            return
        self._send(result, item.keep_alive, item.head_only)

    async def _finish(self, pending: Awaitable[AdminResponse], item: _Item) -> None:
        try:
            resp = await pending
        except Exception:  # noqa: BLE001 - AdminApp already answers handler errors; this is a bug
            log.exception("admin request failed")
            resp = INTERNAL_ERROR
        self.busy = False
        if self.closing:
            return
        try:
            self._send(resp, item.keep_alive, item.head_only)
            self._run()
        except Exception:  # noqa: BLE001
            self._fail("admin connection failed")

    def _send(self, resp: object, keep_alive: bool, head_only: bool) -> None:
        t = self.transport
        if t is None or self.closing:
            return
        try:
            if not isinstance(resp, AdminResponse):
                raise TypeError(f"the handler returned {type(resp).__name__}, not an AdminResponse")
            data = render(resp, keep_alive, head_only)
        except Exception:  # noqa: BLE001 - nothing was written yet: a 500 keeps the connection usable
            log.exception("admin response could not be rendered")
            data = render(INTERNAL_ERROR, keep_alive, head_only)
        t.write(data)
        if not keep_alive:
            self._close()

    def _close(self) -> None:
        t = self.transport
        self.closing = True
        self.queue.clear()
        self.p_kind = K_CLOSING
        self.p_deadline = self.loop.time() + self.t_body
        if t is None:
            return
        if self.rejected and not self.eof and t.can_write_eof():
            # An error reply, and the client may still be sending: lingering close (LINGER_TIME).
            self.lingering = LINGER_BYTES
            self.p_deadline = self.loop.time() + LINGER_TIME
            t.write_eof()
            t.resume_reading()
            return
        t.close()

    # ------------------------------------------------------------------ httptools callbacks: accumulate only
    def on_message_begin(self) -> None:
        self.url = b""
        self.headers = {}
        self.raw_headers = []
        self.hosts = []
        self.misdirected = False
        self.n_headers = 0
        self.h_bytes = 0
        self.p_raw = 0  # (the bytes of this slice before the head are not counted: at most a slice)
        self.body = bytearray()
        # The whole head within GATEWAY_HEADER_TIMEOUT of its first byte (of the accept for the
        # first head): absolute, a head trickled byte by byte does not move it.
        if not self.fresh:
            self.p_deadline = self.loop.time() + self.t_header
        self.fresh = False
        self.p_kind = K_HEADER

    def on_url(self, url: bytes) -> None:
        # (called per piece as the target arrives: decided at the byte that crosses the limit)
        self.url += url
        if len(self.url) > self.lim_uri:
            raise _Rejected(URI_TOO_LONG)

    def on_header(self, name: bytes, value: bytes) -> None:
        # The data plane's accounting (downstream.pyx): name + value + ": " + CRLF per field.
        self.n_headers += 1
        self.h_bytes += len(name) + len(value) + 4
        if self.h_bytes > self.lim_hbytes or self.n_headers > self.lim_headers:
            raise _Rejected(HEAD_TOO_LARGE)
        lname = name.lower()
        if lname == b"host":
            self.hosts.append(value)
        self.raw_headers.append((lname, value))
        self.headers[lname.decode("latin-1")] = value.decode("latin-1")

    def on_headers_complete(self) -> None:
        # From here GATEWAY_BODY_TIMEOUT applies between body bytes (on_message_complete ends it).
        self.p_kind = K_BODY
        self.p_deadline = self.loop.time() + self.t_body
        # llhttp stops after the head of a CONNECT or `Connection: upgrade` request and httptools
        # raises HttpParserUpgrade: the bytes after it are another protocol. The admin API never
        # switches protocols, so both are refused here, as the head completes, and the connection
        # is closed (nothing after that head is read).
        if self.parser.get_method() == b"CONNECT":
            raise _Rejected(NO_CONNECT)
        if self.parser.should_upgrade():
            raise _Rejected(NO_UPGRADE)
        if len(self.hosts) > 1:
            raise _Rejected(REPEATED_HOST)  # which one is meant is ambiguous (RFC 9112 3.2)
        if self.hosts:
            self.misdirected = not self.server.hosts.allows(self.hosts[0], self.local)
        else:
            self.misdirected = self.parser.get_http_version() != "1.0"
        length = self.headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > MAX_BODY:
            raise _Rejected(BODY_TOO_LARGE)  # decided before reading it (llhttp checked the syntax)

    def on_body(self, body: bytes) -> None:
        self.p_deadline = self.loop.time() + self.t_body
        if len(self.body) + len(body) > MAX_BODY:
            raise _Rejected(BODY_TOO_LARGE)  # (chunked: decided when crossed)
        self.body += body

    def on_message_complete(self) -> None:
        self.p_kind = K_NONE
        method = self.parser.get_method().decode("ascii", "replace")
        keep_alive = self.parser.should_keep_alive()
        head_only = method == "HEAD"
        try:
            parsed = httptools.parse_url(self.url)
        except httptools.HttpParserInvalidURLError:
            self.queue.append(_Item(None, error_response(400, "bad_request", "invalid request target"),
                                    keep_alive, head_only))
            return
        if self.misdirected or (parsed.host and not self.server.hosts.allows(
                parsed.host if b":" not in parsed.host else b"[" + parsed.host + b"]", self.local)):
            # Decided before dispatch: no handler runs, a write is not executed. The request was
            # read whole, so the connection stays usable.
            self.queue.append(_Item(None, MISDIRECTED, keep_alive, head_only))
            return
        path = (parsed.path or b"/").decode("utf-8", "replace")
        query = (parsed.query or b"").decode("utf-8", "replace")
        req = AdminRequest(method, path, query, self.headers, bytes(self.body), self.raw_headers)
        req.client_ip = self.peer
        self.queue.append(_Item(req, None, keep_alive, head_only))
