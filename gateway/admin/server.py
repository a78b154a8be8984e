"""The admin listener: a small HTTP/1.1 server on httptools in front of the admin route table.

Not on the data-plane hot path: it favours being small and obviously correct, but it faces the same
hostile peers as the data plane and follows the same rules (gateway/http/downstream.pyx):

- Flow control: one request is answered at a time per connection, pipelined ones wait in order,
  and nothing more is read while MAX_PIPELINE wait or the transport is above its write high-water
  mark (AdminProtocol). A client that pipelines and never reads costs a bounded amount of memory.
- Limits: GATEWAY_MAX_URI_BYTES (414), GATEWAY_MAX_HEADER_BYTES and GATEWAY_MAX_HEADERS (431),
  decided as soon as crossed; bodies are buffered up to MAX_BODY (413, from Content-Length
  before reading when it is given).
- Deadlines on the per-loop Ticker: GATEWAY_HEADER_TIMEOUT for a whole head (absolute) and
  GATEWAY_BODY_TIMEOUT between body bytes (408), GATEWAY_KEEPALIVE_TIMEOUT idle (quiet close),
  GATEWAY_BODY_TIMEOUT for a client to drain our replies (abort).
- Connections: GATEWAY_ADMIN_MAX_CONNECTIONS served at once, the next answered 503 at once (as
  nginx's limit_conn does); accept() out of fds backs off quietly (AdminServer).
- Host check against DNS rebinding (421, api.HostCheck); Upgrade (400) and CONNECT (501) refused;
  the admin token compared as bytes (api.AdminApp).
- Every reply, errors included, leaves in request order; no exception escapes a callback.

Later issues extend the table (`routes.add(...)`): metrics, dashboard, JSON APIs whose writes need
`Authorization: Bearer $GATEWAY_ADMIN_TOKEN` (`write=True`). `/openapi.json` is generated from the
same table (gateway/admin/openapi.py), so a route added here is documented there.
"""
from __future__ import annotations

import asyncio
import errno
import inspect
import ipaddress
import logging
import socket
from collections import deque
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import httptools

from gateway.admin.api import (
    AdminApp,
    AdminRequest,
    AdminResponse,
    AdminRoutes,
    HostCheck,
    IPAddress,
    error_response,
    json_response,
    render,
)
from gateway.admin.openapi import openapi_handler
from gateway.http.flow import PAUSE_CLOSING, PAUSE_PIPELINE, ReadGate, ticker_for

if TYPE_CHECKING:
    from gateway.config import Settings
    from gateway.http.flow import Ticker

log = logging.getLogger("gateway.admin")

__all__ = ["AdminApp", "AdminProtocol", "AdminServer", "base_routes", "render"]

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

BACKLOG = 511               # nginx's default listen backlog on Linux (the kernel caps it at somaxconn)
ACCEPT_BATCH = 16           # accepts per readiness event, so one busy listener cannot starve the loop
ACCEPT_RETRY_MIN = 0.5      # after a failed accept() (EMFILE...), the first retry; doubling up to
ACCEPT_RETRY_MAX = 2.0
ACCEPT_LOG_EVERY = 60.0     # a failing accept() is logged at most once per minute

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
        return True

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
        self.queue.append(_Item(req, None, keep_alive, head_only))


class AdminServer:
    """The admin listener on GATEWAY_ADMIN_HOST:GATEWAY_ADMIN_PORT, with the limits of `settings`.

    It accepts connections itself (a reader on the listening sockets, `connect_accepted_socket`
    for each accepted one) rather than through `loop.create_server`, for two things asyncio
    servers cannot do:

    - Connection cap (GATEWAY_ADMIN_MAX_CONNECTIONS), the way nginx's limit_conn works: at most
      that many connections are served at once; one more is accepted and answered at once with
      503 (`too_many_connections`, Retry-After: 1) and closed, so a client, a probe or an
      operator's curl learns why instead of hanging. Those refusals are bounded too: while as
      many connections again are being refused (each lingers at most LINGER_TIME), accepting
      stops and new connections wait in the kernel's backlog until a slot frees.
    - accept() failing with EMFILE/ENFILE (or ENOBUFS, ENOMEM): accepting stops, new connections
      wait in the backlog, and accept is retried after 0.5 s, doubling up to 2 s, or as soon as
      one of our connections closes (an fd came free). One warning when it starts failing and at
      most one a minute after that, never a line per attempt. (uvloop's own listener, through
      libuv, instead accepts and at once closes every queued connection while out of fds, so
      each client gets a reset, and closes the listener for good, without a word, if that trick
      fails too; asyncio's selector loop logs an error per attempt.)
    """

    def __init__(self, routes: AdminRoutes, settings: Settings) -> None:
        self.routes = routes
        self.settings = settings
        self.app = AdminApp(routes, settings.admin_token)
        self.max_connections = settings.admin_max_connections
        self.hosts = HostCheck(settings.admin_hosts)
        self.too_many = error_response(
            503, "too_many_connections",
            f"the admin API serves at most {self.max_connections} connections at once; retry shortly",
            [("Retry-After", "1")])
        self.loop: asyncio.AbstractEventLoop | None = None
        self.ticker: Ticker = None  # type: ignore[assignment]  # set by start()
        self.sockets: list[socket.socket] = []
        self.connections: set[AdminProtocol] = set()  # served (counted from accept to connection_lost)
        self.refusing: set[AdminProtocol] = set()     # over the cap, being answered 503
        self._accepting = False
        self._closed = False
        self._retry_at = INF
        self._retry_delay = 0.0
        self._failed_accepts = 0
        self._last_report = -INF

    async def start(self, loop: asyncio.AbstractEventLoop, host: str, port: int) -> None:
        self.loop = loop
        self.ticker = ticker_for(loop)  # the data plane's per-loop timer, shared when both run here
        try:
            self.sockets = await _bind(loop, host, port)
        except OSError as exc:
            raise OSError(
                exc.errno, f"cannot listen on {host}:{port} for the admin API: {exc.strerror or exc} "
                f"(set GATEWAY_ADMIN_PORT to a free port, or GATEWAY_ADMIN_HOST)"
            ) from None
        self._resume_accepting()
        log.info("admin listening on %s:%d (max %d connections)", host, port, self.max_connections)

    def close(self) -> None:
        """Stop listening (connections already accepted finish on their own)."""
        self._closed = True
        self._pause_accepting()
        if self.ticker is not None:
            self.ticker.discard(self)
        for s in self.sockets:
            s.close()
        self.sockets = []

    # ------------------------------------------------------------------ accepting
    def _resume_accepting(self) -> None:
        if self._accepting or self._closed or self._retry_at != INF or self.loop is None:
            return
        if len(self.connections) >= self.max_connections and len(self.refusing) >= self.max_connections:
            return
        for s in self.sockets:
            self.loop.add_reader(s.fileno(), self._on_readable, s)
        self._accepting = True

    def _pause_accepting(self) -> None:
        if not self._accepting or self.loop is None:
            return
        self._accepting = False
        for s in self.sockets:
            self.loop.remove_reader(s.fileno())

    def _on_readable(self, sock: socket.socket) -> None:
        try:
            for _ in range(ACCEPT_BATCH):
                over = len(self.connections) >= self.max_connections
                if over and len(self.refusing) >= self.max_connections:
                    self._pause_accepting()  # the kernel's backlog holds the next ones
                    return
                try:
                    conn, _ = sock.accept()
                except (BlockingIOError, InterruptedError):
                    return
                except ConnectionAbortedError:
                    continue  # the client gave up while queued
                except OSError as exc:
                    self._accept_failed(exc)
                    return
                if self._failed_accepts:
                    log.debug("admin listener accepting again after %d failed accept()s", self._failed_accepts)
                    self._failed_accepts = 0
                self._retry_delay = 0.0
                self._attach(conn, over)
        except Exception as exc:  # noqa: BLE001 - a bug here must not spin or kill the listener
            self._accept_failed(exc)

    def _accept_failed(self, exc: Exception) -> None:
        """Stop accepting for a while; new connections wait in the kernel's backlog meanwhile."""
        assert self.loop is not None
        self._pause_accepting()
        self._failed_accepts += 1
        self._retry_delay = min(max(self._retry_delay * 2, ACCEPT_RETRY_MIN), ACCEPT_RETRY_MAX)
        now = self.loop.time()
        self._retry_at = now + self._retry_delay
        self.ticker.add(self)
        if now - self._last_report >= ACCEPT_LOG_EVERY:
            self._last_report = now
            exhausted = isinstance(exc, OSError) and exc.errno in _RESOURCE_ERRNOS
            log.log(logging.WARNING if exhausted else logging.ERROR,
                    "admin listener: accept() failed (%s; %d attempt(s) since the last report): "
                    "not accepting for now, new connections wait in the backlog; retrying quietly",
                    exc, self._failed_accepts, exc_info=None if exhausted else exc)

    def on_tick(self, now: float) -> None:
        """The Ticker's call while accepting is suspended after a failed accept()."""
        if now >= self._retry_at:
            self._retry_now()

    def _retry_now(self) -> None:
        self._retry_at = INF
        self.ticker.discard(self)
        self._resume_accepting()

    def _attach(self, conn: socket.socket, over: bool) -> None:
        assert self.loop is not None
        conn.setblocking(False)
        try:
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:
            pass
        proto = AdminProtocol(self, over_capacity=over)
        (self.refusing if over else self.connections).add(proto)
        self.loop.create_task(self._connect(conn, proto))

    async def _connect(self, conn: socket.socket, proto: AdminProtocol) -> None:
        assert self.loop is not None
        try:
            await self.loop.connect_accepted_socket(lambda: proto, conn)
        except Exception as exc:  # noqa: BLE001 - e.g. reset before the transport was set up
            log.debug("admin connection could not be set up: %s", exc)
            conn.close()
            self.release(proto)

    def release(self, proto: AdminProtocol) -> None:
        """A connection is gone (AdminProtocol.connection_lost): its slot and its fd are free."""
        if proto in self.connections:
            self.connections.discard(proto)
        elif proto in self.refusing:
            self.refusing.discard(proto)
        else:
            return
        if self._retry_at != INF:
            self._retry_now()  # an fd came free: try now rather than at the next tick
        else:
            self._resume_accepting()


_RESOURCE_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})


async def _bind(loop: asyncio.AbstractEventLoop, host: str, port: int) -> list[socket.socket]:
    """Listening, non-blocking sockets for every address `host` resolves to (like create_server)."""
    infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    socks: list[socket.socket] = []
    seen = set()
    try:
        for family, type_, proto, _, addr in infos:
            if (family, addr) in seen:
                continue
            seen.add((family, addr))
            s = socket.socket(family, type_, proto)
            socks.append(s)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            s.bind(addr)
            s.listen(BACKLOG)
            s.setblocking(False)
    except OSError:
        for s in socks:
            s.close()
        raise
    return socks


def base_routes(ready: Callable[[], tuple[bool, dict[str, Any]]], health: Callable[[], dict[str, Any]]) -> AdminRoutes:
    """The routes of issue 2: /health, /ready, /openapi.json. Later issues add theirs to the table."""
    routes = AdminRoutes()

    def get_health(req: AdminRequest) -> AdminResponse:
        return json_response({"status": "ok", **health()})

    def get_ready(req: AdminRequest) -> AdminResponse:
        ok, details = ready()
        return json_response({"status": "ready" if ok else "not_ready", **details}, 200 if ok else 503)

    routes.add("GET", "/health", get_health, summary="Liveness: 200 while the process serves", tag="health",
               responses={"200": {"description": "The process serves"}})
    routes.add("GET", "/ready", get_ready, summary="Readiness: 200 when the configuration is loaded "
               "and the gateway is not draining", tag="health",
               responses={"200": {"description": "Ready"}, "503": {"description": "Not ready (draining, no workers)"}})
    routes.add("GET", "/openapi.json", openapi_handler(routes), summary="This OpenAPI 3.1 document", tag="meta",
               responses={"200": {"description": "OpenAPI 3.1 document"}})
    return routes
