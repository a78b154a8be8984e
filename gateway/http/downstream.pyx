"""DownstreamProtocol: one client connection, parsed with httptools.HttpRequestParser.

Attributes come in three groups (the uvicorn layout):
- per worker (shared, read-only): worker, loop, settings, ticker;
- per connection: transport, parser, gate (read flow control), peer, the pipelining queue;
- per request, in two halves, because with pipelining the request being *parsed* (p_*) is not
  necessarily the one being *answered* (a_*). Exactly one exchange is active per connection;
  later requests wait in `queue` (bounded: reading pauses when it is full), with their body bytes
  buffered up to a bound, and are answered in order.

The common path creates no task, future or closure: on_headers_complete builds the
RequestContext, matches the route and hands the request to a pooled UpstreamProtocol, whose
callbacks write the response here (`write_response`) and call `exchange_done`. Tasks exist only
for a new upstream connection (pool.connect) and for an access filter that must wait on I/O.

Timeouts are deadlines stored on the connection and checked by the per-loop Ticker (flow.pyx):
the header deadline is absolute from the first byte of a head, the body deadline moves with each
body chunk, the keep-alive deadline starts when the connection becomes idle.

Compiled with Cython (asyncpg's layout): the state and the internal steps live in the cdef class
_DownstreamBase (fields in downstream.pxd), DownstreamProtocol adds asyncio.Protocol as a base.
It stays in gateway/http, not gateway/_fast, because it does I/O (DESIGN.md keeps _fast I/O-free);
the same holds for upstream.pyx, pool.pyx and flow.pyx.
"""
import asyncio
import logging
from collections import deque
from typing import Any

import httptools

from cpython.bytes cimport PyBytes_AS_STRING

from gateway.pipeline.context cimport RequestContext
from gateway.routing cimport Router
from gateway.pipeline.reply import LocalReply

from . import replies
from .errors import RequestRejected
from .flow import (
    PAUSE_BUFFER,
    PAUSE_CLOSING,
    PAUSE_PIPELINE,
    PAUSE_TURN,
    PAUSE_UPSTREAM,
    PAUSE_WRITE,
    ticker_for,
)

from gateway.http.flow cimport ReadGate
from gateway.http.parser_stop cimport stop_offset
from gateway.http.pool cimport UpstreamPool
from gateway.http.request cimport RequestBuilder, new_request_id
from gateway.http.upstream cimport _UpstreamBase
from .wire import CONTINUE_100, LAST_CHUNK

log = logging.getLogger("gateway.http")
cdef double INF = float("inf")  # a C double: compared per request without a global lookup
cdef int cPAUSE_UPSTREAM = PAUSE_UPSTREAM
cdef int cPAUSE_CLOSING = PAUSE_CLOSING
cdef int cPAUSE_WRITE = PAUSE_WRITE
cdef int cPAUSE_TURN = PAUSE_TURN

MAX_PIPELINE = 16             # parsed requests waiting for their turn before reading pauses
MAX_BUFFERED_BODY = 65536     # body bytes held while no upstream is ready, before reading pauses

# Request-line bytes that are neither target nor head fields ("GET", "HTTP/1.1"), allowed on top of
# the target and head limits when an incomplete head is measured (data_received).
cdef Py_ssize_t HEAD_SLACK = 32


cdef Py_ssize_t _visible(bytes data) noexcept:
    """Bytes of data other than SP, HTAB, CR and LF."""
    cdef const unsigned char* p = <const unsigned char*>PyBytes_AS_STRING(data)
    cdef Py_ssize_t i, n = len(data), ws = 0
    cdef unsigned char c
    for i in range(n):
        c = p[i]
        if c == 32 or c == 9 or c == 13 or c == 10:
            ws += 1
    return n - ws


# A chunked request body is decoded by _dechunk (states below), not by llhttp, which has no bound
# on a chunk-size line and reads any chunk size up to 2^64 as body.
cdef Py_ssize_t C_MAX_LINE = 4096  # bytes of a chunk-size line, extensions included (Node: 16 KiB)
MAX_CHUNK_LINE = C_MAX_LINE

cdef enum:
    C_OFF = 0           # llhttp reads the stream
    C_SIZE = 1          # chunk-size digits (c_line counts the whole line)
    # chunk extensions, parsed as llhttp parses them: *( ";" name [ "=" ( token / quoted-string ) ] )
    C_EXT = 2           # just after ';'
    C_EXT_NAME = 3
    C_EXT_VALUE = 4     # a token value
    C_EXT_Q = 5         # inside a quoted string
    C_EXT_QP = 6        # after a backslash inside a quoted string
    C_EXT_QDONE = 7     # after the closing quote
    C_SIZE_LF = 8       # the CR ending the chunk-size line was read
    C_DATA = 9          # c_size bytes of chunk data left
    C_DATA_CR = 10      # CRLF after the chunk data
    C_DATA_LF = 11
    C_TRAILER = 12      # start of a trailer line, or of the empty line ending the body
    C_FIELD = 13        # trailer field name
    C_VALUE = 14        # trailer field value
    C_TRAILER_LF = 15
    C_END_LF = 16
    C_FAILED = 17       # refused: nothing more is read

cdef signed char _HEX[256]       # hex digit value, -1 for other bytes
cdef unsigned char _TCHAR[256]   # RFC 9110 token characters
cdef int _i
cdef unsigned char _c
for _i in range(256):
    _HEX[_i] = -1
    _TCHAR[_i] = 0
for _i, _c in enumerate(b"0123456789abcdef"):
    _HEX[_c] = _i
for _i, _c in enumerate(b"ABCDEF"):
    _HEX[_c] = 10 + _i
for _c in b"!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ":
    _TCHAR[_c] = 1


cdef inline bint _field_char(unsigned char c) noexcept:
    """HTAB, SP, VCHAR or obs-text: what a field value or a quoted string may hold (no CTL, no DEL)."""
    return c == 9 or (c >= 32 and c != 127)


class _TakeOver(Exception):
    """Raised by on_headers_complete to stop llhttp right after the head of a chunked request."""


class _LayoutProbe:
    def on_headers_complete(self) -> None:
        raise _TakeOver()


def _check_parser_layout() -> None:
    """parser_stop.pxd reads llhttp's state inside httptools' parser: check it reads it right."""
    data = b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n"
    parser = httptools.HttpRequestParser(_LayoutProbe())
    try:
        parser.feed_data(data)
    except httptools.HttpParserError:
        pass
    if stop_offset(parser, data) != data.index(b"5\r\n"):
        raise ImportError(f"httptools {httptools.__version__}: its parser's layout is not the one "
                          "gateway/http/parser_stop.pxd reads (checked with httptools 0.9)")


_check_parser_layout()

# How much of a read is parsed at once (see _consume and _plan). C constants: read per read.
cdef Py_ssize_t cMAX_PIPELINE = MAX_PIPELINE
cdef Py_ssize_t cMAX_BUFFERED_BODY = MAX_BUFFERED_BODY
# The shortest head llhttp completes is 18 bytes ("GET / HTTP/1.1\r\n\r\n"); 16 leaves a margin.
cdef Py_ssize_t MIN_HEAD = 16
# Bytes fed to llhttp in one call when a read is not plain Content-Length body: small enough that
# one call's work stays well under a millisecond (16 KiB of one-byte chunks is 2,730 on_body calls).
cdef Py_ssize_t SLICE = 16384
# Work per turn (a data_received or a _continue) before yielding to the loop: one unit per body
# piece, HEAD_WORK per head (routing, filters, the upstream write: a local 404 costs about as
# much as 30 one-byte chunks). About 0.5 ms of CPU on the machine of bench/RESULTS.md; another
# client's request waits for at most a turn or two (bench/hostile_peers.py tiny-chunks).
cdef Py_ssize_t WORK_PER_TURN = 2048
cdef Py_ssize_t HEAD_WORK = 32

# parse-side deadline kinds
cdef enum:
    K_NONE = 0
    K_HEADER = 1
    K_BODY = 2
    K_IDLE = 3


cdef class _Queued:
    """A pipelined request waiting for the active exchange to finish (uncommon path)."""

    def __init__(self, RequestContext ctx, bint expect, bint done) -> None:
        self.ctx = ctx
        self.body = []
        self.size = 0
        self.done = done
        self.expect = expect


cdef class _DownstreamBase:
    """The protocol's state and logic; DownstreamProtocol (below) adds asyncio.Protocol as a base.

    (Attributes: downstream.pxd. `def` methods are what asyncio/uvloop, httptools, the pool, the
    worker, the ticker and tests call; `cdef` methods are the internal steps.)
    """

    def __init__(self, worker: Any) -> None:
        self.worker = worker
        self.loop = worker.loop
        self.settings = s = worker.settings
        self.ticker = ticker_for(worker.loop)
        # Limits copied onto the connection: one attribute load per check on the hot path instead
        # of two (settings are immutable for the worker's life; a reload swaps only the runtime).
        self.lim_uri = s.max_uri_bytes
        self.lim_hbytes = s.max_header_bytes
        self.lim_headers = s.max_headers
        self.lim_body = s.max_body_bytes
        self.t_header = s.header_timeout
        self.t_body = s.body_timeout
        self.t_keepalive = s.keepalive_timeout
        self.t_upstream = s.upstream_timeout
        self.transport = None
        self.parser = httptools.HttpRequestParser(self)
        self.p_feed = self.parser.feed_data
        self.l_time = worker.loop.time
        self.t_write = None
        self.gate = None  # set in connection_made
        self.builder = None
        self.peer = ""
        self.queue = deque()
        self.closing = False
        self.w_deadline = INF
        self.reject_after: LocalReply | None = None
        self.p_rest = b""
        self.p_work = 0
        self.p_resume = False
        self.eof = False
        self.o_body = []
        self.o_size = 0
        self._reset_parse()
        self.p_kind = K_NONE
        self.p_deadline = INF
        self.a_ctx = None
        self.a_up = None
        self.a_pending = []
        self.a_pending_size = 0
        self.a_body_done = True
        self.a_task: asyncio.Task[Any] | None = None
        self.a_expect = False

    cdef int _reset_parse(self) except -1:
        self.in_head = False
        self.p_url = b""
        self.p_headers = []
        self.p_hbytes = 0
        self.p_raw = 0
        self.p_body = 0
        self.p_ctx = None
        self.p_entry = None
        self.p_has_body = False
        self.p_expect = False
        self.p_conn = False
        return 0

    # ------------------------------------------------------------------ connection
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        self.t_write = transport.write
        self.gate = ReadGate(transport)
        self.gate.on_open = self._reopened
        peer = transport.get_extra_info("peername")
        self.peer = peer[0] if peer else ""
        self.builder = RequestBuilder(self.settings, self.peer)
        self.p_kind = K_IDLE
        self.p_deadline = self.ticker.now + self.settings.keepalive_timeout
        self.ticker.add(self)
        self.worker.connection_made(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closing = True
        self.ticker.discard(self)
        if self.a_up is not None:
            self.a_up._abort()  # the response has nowhere to go: never reuse a half-read connection
            self.a_up = None
        if self.a_ctx is not None:
            self._attempt_end(self.a_ctx, "aborted")   # (a no-op unless an attempt is open)
        if self.a_task is not None:
            self.a_task.cancel()
            self.a_task = None
        ctx = self.a_ctx
        if ctx is not None:
            self.a_ctx = None
            self._log(ctx)
        self.queue.clear()
        # Free the held bytes now: the protocol and its parser (or gate) reference each other, so
        # the object itself may wait for a cyclic garbage collection.
        self.p_rest = b""
        self.o_body = []
        if self.gate is not None:
            self.gate.on_open = None
        try:
            self.worker.connection_lost(self)
        except Exception:  # noqa: BLE001
            log.exception("worker.connection_lost failed")

    def pause_writing(self) -> None:
        # The client reads slower than we write: stop reading the upstream (bounded memory) and the
        # client itself, whoever produces the bytes (pipelined local replies too); a client that
        # stops reading entirely is cut after GATEWAY_BODY_TIMEOUT.
        self.w_deadline = self.ticker.now + self.settings.body_timeout
        self.gate.pause(cPAUSE_WRITE)
        if self.a_up is not None:
            self.a_up._pause_reading()

    def resume_writing(self) -> None:
        self.w_deadline = INF
        self.gate.resume(cPAUSE_WRITE)
        if self.a_up is not None:
            self.a_up._resume_reading()

    def eof_received(self) -> bool:
        """The client half-closed its side (FIN). Like HAProxy (and unlike asyncio's default, which
        closes the transport), every request it sent completely still gets its response; then we
        close. A request cut by the EOF can never complete: an incomplete head is dropped, an
        incomplete pipelined request is dropped with it, and an active exchange whose body can no
        longer arrive closes the connection now (its upstream request is aborted)."""
        self.eof = True
        self.gate.ended = True  # never resume reading a stream after EOF
        if self.closing:
            return False
        return self._eof_keep()

    cdef bint _eof_keep(self) except -1:
        """After EOF: whether a response is still due (or bytes still to parse); drops what cannot complete."""
        cdef _Queued entry
        if self.p_rest and not self.gate.reasons & cPAUSE_CLOSING:
            return True  # parsed when the gate opens; decided again after
        if self.in_head:
            self.in_head = False
            self.p_kind = K_NONE
        elif self.p_ctx is not None:
            entry = self.p_entry
            if entry is None:
                return False  # the active request's body can never complete
            self.queue.remove(entry)
            self.p_ctx = None
            self.p_entry = None
            self.p_kind = K_NONE
            if len(self.queue) < MAX_PIPELINE:
                self.gate.resume(PAUSE_PIPELINE)
        return self.a_ctx is not None or bool(self.queue) or self.reject_after is not None

    def data_received(self, data: bytes) -> None:
        if self.closing:
            return
        if self.p_rest:
            # Held bytes come first (the transport delivered more before _continue ran).
            data = self.p_rest + data
            self.p_rest = b""
        self._consume(data)

    cdef int _consume(self, bytes data) except -1:
        """Parse `data` a slice at a time (_plan), stopping as soon as reading is paused or this
        turn's work bound is reached; the unparsed rest waits in p_rest. So memory per connection
        is bounded by the pipeline queue and the body buffers (not by the size of a read), and no
        connection keeps the loop for more than about a millisecond. The common read (one
        request, or a Content-Length body) is one slice: one feed_data call, as before."""
        cdef Py_ssize_t n = len(data), pos = 0, end
        cdef ReadGate gate = self.gate
        self.p_work = 0
        while pos < n and not self.closing:
            if gate.reasons:
                self.p_rest = data[pos:] if pos else data
                break
            if self.p_work >= WORK_PER_TURN:
                self.p_rest = data[pos:]
                gate.pause(cPAUSE_TURN)
                self._resume_soon()
                break
            end = self._plan(data, pos, n)
            self._feed(data if pos == 0 and end == n else data[pos:end])
            pos = end
        if self.o_body:
            self._flush_body()
        return 0

    cdef Py_ssize_t _plan(self, bytes data, Py_ssize_t pos, Py_ssize_t n) except -1:
        """The end of the next slice of data[pos:n] to parse."""
        cdef Py_ssize_t avail = n - pos, room, k, i
        cdef RequestContext ctx = self.p_ctx
        cdef long long left
        if ctx is not None and self.p_kind == K_BODY and not ctx.chunked:
            # Inside a Content-Length body: these bytes are body whatever they hold (one on_body).
            left = ctx.content_length - self.p_body
            if left > 0:
                if left < avail:
                    avail = left
                # Body held here (a queued request's, or while no upstream is ready) stops one
                # byte past its bound, where reading pauses: not a whole read past it.
                if self.p_entry is not None:
                    room = cMAX_BUFFERED_BODY + 1 - self.p_entry.size
                elif self.a_up is None:
                    room = cMAX_BUFFERED_BODY + 1 - self.a_pending_size
                else:
                    return pos + avail
                if room < 1:
                    room = 1
                return pos + (room if room < avail else avail)
        if avail > SLICE:
            avail = SLICE
        # At most `room` more heads may complete before the queue is full (the first one becomes
        # the active exchange when there is none).
        room = cMAX_PIPELINE - len(self.queue) + (1 if self.a_ctx is None else 0)
        if room < 1:
            room = 1
        if avail <= MIN_HEAD * room:
            return pos + avail
        # More bytes than `room` of the shortest heads: cut before the head end ("\r\n\r\n": llhttp
        # accepts no other, tests/http/test_bounds.py checks it) that would be one too many. A head
        # begun in an earlier slice may end with the first bytes of this one: it counts too.
        # (Bytes of a body may look like head ends: that only makes a slice shorter.)
        k = room - (1 if self.in_head else 0)
        i = pos
        while True:
            i = data.find(b"\r\n\r\n", i, pos + avail)
            if i < 0:
                return pos + avail
            if k == 0:
                return i + 3  # the last byte of this head end goes in the next slice
            k -= 1
            i += 1

    def _continue(self) -> None:
        """The rest of a read, held by a yield or a pause, parsed on a later loop turn."""
        self.gate.resume(cPAUSE_TURN)  # (its on_open sees p_resume still set: no second call)
        self.p_resume = False
        if self.closing or self.gate.reasons or not self.p_rest:
            return
        data = self.p_rest
        self.p_rest = b""
        self._consume(data)
        if self.eof and not self.closing and not self.p_rest and not self._eof_keep():
            self._close()

    def _reopened(self) -> None:
        # ReadGate.on_open: the last pause reason was lifted. Never parse from here (we may be
        # inside a parser callback or the upstream's): the held bytes go on the next loop turn.
        if self.p_rest:
            self._resume_soon()

    cdef int _resume_soon(self) except -1:
        if not self.p_resume:
            self.p_resume = True
            self.loop.call_soon(self._continue)
        return 0

    cdef int _flush_body(self) except -1:
        """Write the body pieces of this turn to the active upstream in one write (one chunk)."""
        cdef list out = self.o_body
        cdef Py_ssize_t size = self.o_size
        cdef RequestContext ctx = self.a_ctx
        self.o_body = []
        self.o_size = 0
        up = self.a_up
        if up is None or ctx is None or self.closing:
            return 0  # the exchange was abandoned (413, upstream failure): the bytes go nowhere
        if ctx.chunked:
            # Chunk extensions never survive: we re-frame what _dechunk hands us (one chunk a turn).
            out.insert(0, b"%x\r\n" % size)
            out.append(b"\r\n")
        up._send(b"".join(out) if len(out) > 1 else out[0])
        return 0

    cdef int _feed(self, bytes data) except -1:
        self.p_done = False
        while True:
            if self.c_state != C_OFF:
                # Inside a chunked request body (see on_headers_complete).
                try:
                    used = self._dechunk(data)
                except RequestRejected as exc:
                    self._reject(exc.reply)
                    break
                except Exception:  # noqa: BLE001 - nothing may escape a protocol callback
                    log.exception("request handling failed")
                    self._reject(replies.INTERNAL_ERROR)
                    break
                if used == len(data) or self.closing:
                    break
                data = data[used:]  # the body ended: llhttp reads the next request
            try:
                self.p_feed(data)
            except RequestRejected as exc:
                self._reject(exc.reply)
            except httptools.HttpParserUpgrade as exc:
                # llhttp stops after the head of an `Connection: upgrade` request. We never switch
                # protocols (Upgrade is stripped, see request.pyx), so the request was proxied as a
                # plain one (it has no body: on_headers_complete refused those); parsing continues
                # with a fresh parser at the next byte.
                offset = exc.args[0] if exc.args and isinstance(exc.args[0], int) else len(data)
                self.parser = httptools.HttpRequestParser(self)
                self.p_feed = self.parser.feed_data
                self._message_complete()
                data = data[offset:]
                if data and not self.closing:
                    continue
            except httptools.HttpParserError as exc:
                # httptools wraps an exception raised by a callback in HttpParserCallbackError and
                # chains the original (__context__): our RequestRejected carries the reply to send.
                cause = exc.__cause__ or exc.__context__
                if type(cause) is _TakeOver:
                    # on_headers_complete gave the chunked body to _dechunk: llhttp stopped right
                    # after the head; a fresh parser takes over again after the body.
                    offset = stop_offset(self.parser, data)
                    self.parser = httptools.HttpRequestParser(self)
                    self.p_feed = self.parser.feed_data
                    if offset < 0:  # (the layout is checked at import: never expected)
                        log.error("no parser offset after a chunked head")
                        self._reject(replies.INTERNAL_ERROR)
                        break
                    data = data[offset:]
                    if data and not self.closing:
                        continue
                    break
                if isinstance(cause, RequestRejected):
                    reply = cause.reply
                elif isinstance(cause, Exception):
                    log.error("request handling failed", exc_info=cause)
                    reply = replies.INTERNAL_ERROR
                elif isinstance(exc, httptools.HttpParserInvalidURLError):
                    reply = replies.BAD_TARGET
                else:
                    reply = replies.BAD_REQUEST
                self._reject(reply)
            except Exception:  # noqa: BLE001 - nothing may escape a protocol callback
                log.exception("request handling failed")
                self._reject(replies.INTERNAL_ERROR)
            break
        # A head still incomplete after this read: the head limit is decided here, as soon as it is
        # crossed, even if llhttp is still inside one huge header line (httptools hands a field
        # over only once it ends). The verdict must be the one the exact checks (on_url, on_header)
        # give the complete head, however the bytes are split: so only bytes those checks count
        # too are counted (not the whitespace llhttp drops or that frames the lines), and the
        # request line's method and version are allowed for (HEAD_SLACK). A read in which an
        # earlier message ended is not counted (where this head starts in it is unknown): the
        # verdict then comes from the next read or from the exact checks, never a wrong one.
        if self.in_head and not self.closing and not self.p_done:
            self.p_raw += _visible(data)
            if self.p_raw > self.lim_hbytes + self.lim_uri + HEAD_SLACK:
                self._reject(replies.HEADERS_TOO_LARGE)
        return 0

    # ------------------------------------------------------------------ parser callbacks
    def on_message_begin(self) -> None:
        # (p_ctx/p_entry/p_has_body/p_expect are always set by on_headers_complete before use.)
        self.in_head = True
        self.p_url = b""
        self.p_headers = []
        self.p_hbytes = 0
        self.p_body = 0
        self.p_conn = False
        self.p_raw = 0  # (data_received counts this head's bytes after feed_data, if still incomplete)
        # Absolute deadline from the first byte of the head; never moved while the head trickles in.
        self.p_kind = K_HEADER
        self.p_deadline = self.ticker.now + self.t_header

    def on_url(self, url: bytes) -> None:
        self.p_url += url
        if len(self.p_url) > self.lim_uri:
            raise RequestRejected(replies.URI_TOO_LONG)

    def on_header(self, bytes name, bytes value) -> None:
        cdef list headers = self.p_headers
        cdef Py_ssize_t n = len(name)
        headers.append((name, value))
        if (n == 10 or n == 16) and not self.p_conn:
            # (see on_headers_complete: only these two names set llhttp's keep-alive flags)
            lname = name.lower()
            self.p_conn = lname == b"connection" or lname == b"proxy-connection"
        self.p_hbytes += len(name) + len(value) + 4
        if self.p_hbytes > self.lim_hbytes or len(headers) > self.lim_headers:
            raise RequestRejected(replies.HEADERS_TOO_LARGE)

    def on_headers_complete(self) -> None:
        cdef RequestContext ctx
        cdef bint has_body, expect
        cdef _Queued entry
        self.in_head = False
        parser = self.parser
        builder = self.builder
        method = parser.get_method()
        keep_alive = parser.should_keep_alive()
        # get_http_version() formats a new str per call (the dearest getter, ~0.15 us). llhttp (strict:
        # only 0.9, 1.0, 1.1 and 2.0 parse) says keep-alive for 1.1 unless "close", and for the
        # others only with a keep-alive token in Connection/Proxy-Connection: so keep-alive with
        # neither field present can only be HTTP/1.1.
        version = "1.1" if keep_alive and not self.p_conn else parser.get_http_version()
        ctx = builder.build(method, version, self.p_url, self.p_headers,
                            keep_alive and not self.worker.draining)
        has_body = builder.has_body
        expect = builder.expect
        self.p_work += HEAD_WORK
        if has_body and parser.should_upgrade():
            raise RequestRejected(replies.BAD_REQUEST)  # see data_received's HttpParserUpgrade
        ctx.start = self.l_time()
        self.p_ctx = ctx
        self.p_entry = None
        self.p_has_body = has_body
        self.p_expect = expect
        if has_body:
            self.p_kind = K_BODY
            self.p_deadline = self.ticker.now + self.t_body
        else:
            self.p_kind = K_NONE
        if ctx.chunked:
            # The body is decoded by _dechunk from the byte after this head, not by llhttp: the
            # framing verdict is then request.pyx's alone (llhttp would refuse `chunked<TAB>` only
            # after this callback, when the request may already be upstream), and chunk sizes and
            # extensions get bounds llhttp lacks. The request goes upstream once its first
            # chunk-size line is valid, so a body refused there reaches no upstream at all; with
            # Expect the client waits for our 100, so it goes now.
            self.c_state = C_SIZE
            self.c_size = 0
            self.c_total = 0
            self.c_line = 0
            self.c_defer = not expect
            if expect:
                self._dispatch(ctx, True, True)
            raise _TakeOver()
        self._dispatch(ctx, has_body, expect)

    cdef int _dispatch(self, RequestContext ctx, bint has_body, bint expect) except -1:
        """Start the parsed request now, or queue it behind the active exchange."""
        cdef _Queued entry
        if self.a_ctx is None and not self.queue:
            self._activate(ctx, None, not has_body, expect)
        else:
            entry = _Queued(ctx, expect, not has_body)
            self.p_entry = entry
            self.queue.append(entry)
            if len(self.queue) >= MAX_PIPELINE:
                self.gate.pause(PAUSE_PIPELINE)
        return 0

    def on_body(self, bytes body) -> None:
        cdef Py_ssize_t n = len(body)
        cdef RequestContext ctx
        cdef _Queued entry
        self.p_body += n
        if self.p_body > self.lim_body:
            raise RequestRejected(replies.BODY_TOO_LARGE)
        self.p_deadline = self.ticker.now + self.t_body
        self.p_work += 1
        entry = self.p_entry
        if entry is None and self.a_up is not None:
            # Streaming to the upstream: written once per turn (_flush_body), so a body of tiny
            # chunks costs one write per read, not one per chunk.
            self.o_body.append(body)
            self.o_size += n
            return
        ctx = self.p_ctx
        assert ctx is not None
        # Chunk extensions never survive: we re-frame each piece _dechunk hands us.
        data = b"%x\r\n%s\r\n" % (n, body) if ctx.chunked else body
        if entry is None:
            self._body_out(data)
        else:
            entry.body.append(data)
            entry.size += len(data)
            if entry.size > MAX_BUFFERED_BODY:
                self.gate.pause(PAUSE_BUFFER)

    cdef Py_ssize_t _dechunk(self, bytes data) except -1:
        """Decode chunked body bytes (RFC 9112 §7.1); the number of bytes of data that were body.

        As strict as llhttp (no whitespace around the size, CRLF only, extensions as tokens or
        quoted strings), with the bounds llhttp lacks: a chunk size that would take the body past
        the limit is a 413 at the digit that does it, a chunk-size line over MAX_CHUNK_LINE a 400,
        a trailer section over the head limit a 431: nothing after such a line is read as body.
        Every verdict falls on a byte, so it is the same however the bytes are split. The data of
        one read goes on as one chunk (through on_body); extensions and trailers are dropped.
        """
        cdef const unsigned char* p = <const unsigned char*>PyBytes_AS_STRING(data)
        cdef Py_ssize_t n = len(data), i = 0, take
        cdef int st = self.c_state
        cdef int d
        cdef unsigned char c
        cdef list runs = None
        reply = None
        if st == C_FAILED:
            return n
        while i < n:
            if st == C_DATA:
                take = n - i if self.c_size > n - i else <Py_ssize_t>self.c_size
                if runs is None:
                    runs = []
                runs.append(data[i:i + take] if take < n else data)
                self.p_work += 1  # a piece per chunk: a flood of tiny chunks yields like on_body's
                i += take
                self.c_size -= take
                if self.c_size == 0:
                    st = C_DATA_CR
                continue
            c = p[i]
            i += 1
            if st == C_SIZE:
                d = _HEX[c]
                if d >= 0:
                    self.c_size = self.c_size * 16 + d
                    self.c_line += 1
                    if self.c_total + self.c_size > self.lim_body:
                        reply = replies.BODY_TOO_LARGE
                        break
                elif self.c_line == 0:
                    reply = replies.BAD_REQUEST
                    break
                elif c == 59:  # ';'
                    st = C_EXT
                    self.c_line += 1
                elif c == 13:
                    st = C_SIZE_LF
                else:
                    reply = replies.BAD_REQUEST
                    break
            elif st <= C_EXT_QDONE:
                # (as llhttp: a name may be empty, a value is a token or a quoted string; the CR that
                # ends the line is not counted in c_line)
                if c == 13 and (st == C_EXT_NAME or st == C_EXT_VALUE or st == C_EXT_QDONE):
                    st = C_SIZE_LF
                    continue
                self.c_line += 1
                if st == C_EXT_Q:
                    if c == 34:  # '"'
                        st = C_EXT_QDONE
                    elif c == 92:  # '\\'
                        st = C_EXT_QP
                    elif not _field_char(c):
                        reply = replies.BAD_REQUEST
                        break
                elif st == C_EXT_QP:
                    if not _field_char(c):
                        reply = replies.BAD_REQUEST
                        break
                    st = C_EXT_Q
                elif c == 59:  # ';': the next extension
                    st = C_EXT
                elif st == C_EXT_QDONE:
                    reply = replies.BAD_REQUEST
                    break
                elif c == 61 and st != C_EXT_VALUE:  # '='
                    st = C_EXT_VALUE
                elif c == 34 and st == C_EXT_VALUE:
                    st = C_EXT_Q
                elif _TCHAR[c]:
                    if st == C_EXT:
                        st = C_EXT_NAME
                else:
                    reply = replies.BAD_REQUEST
                    break
            elif st == C_SIZE_LF:
                if c != 10:
                    reply = replies.BAD_REQUEST
                    break
                self.c_total += self.c_size
                self.c_line = 0
                st = C_DATA if self.c_size else C_TRAILER
                if self.c_defer:
                    self.c_defer = False
                    self.c_state = st
                    self._dispatch(self.p_ctx, True, False)
                    if self.closing:  # (answered locally: no route, a filter's refusal...)
                        return n
            elif st == C_DATA_CR:
                if c != 13:
                    reply = replies.BAD_REQUEST
                    break
                st = C_DATA_LF
            elif st == C_DATA_LF:
                if c != 10:
                    reply = replies.BAD_REQUEST
                    break
                st = C_SIZE
                self.c_size = 0
            else:
                # The trailer section (dropped; bounded like a head) and the empty line ending it.
                self.c_line += 1
                if self.c_line > self.lim_hbytes:
                    reply = replies.HEADERS_TOO_LARGE
                    break
                if st == C_TRAILER:
                    if c == 13:
                        st = C_END_LF
                    elif _TCHAR[c]:
                        st = C_FIELD
                    else:
                        reply = replies.BAD_REQUEST
                        break
                elif st == C_FIELD:
                    if c == 58:  # ':'
                        st = C_VALUE
                    elif not _TCHAR[c]:
                        reply = replies.BAD_REQUEST
                        break
                elif st == C_VALUE:
                    if c == 13:
                        st = C_TRAILER_LF
                    elif not _field_char(c):
                        reply = replies.BAD_REQUEST
                        break
                elif c != 10:  # C_TRAILER_LF, C_END_LF
                    reply = replies.BAD_REQUEST
                    break
                elif st == C_TRAILER_LF:
                    st = C_TRAILER
                else:
                    st = C_OFF
                    break
            if self.c_line > C_MAX_LINE and st <= C_SIZE_LF:
                reply = replies.CHUNK_LINE_TOO_LONG
                break
        # The data read so far goes on first, so that a refusal or the end comes after the same
        # body bytes however the stream was split.
        self.c_state = C_FAILED if reply is not None else st
        if runs is not None:
            self.on_body(runs[0] if len(runs) == 1 else b"".join(runs))
        if reply is not None:
            raise RequestRejected(reply)
        if st == C_OFF:
            self._message_complete()
        return i

    def on_message_complete(self) -> None:
        self._message_complete()

    cdef int _message_complete(self) except -1:
        cdef RequestContext ctx = self.p_ctx
        cdef _Queued entry
        self.p_kind = K_NONE
        self.p_done = True
        if ctx is None:
            return 0
        ctx.bytes_in = self.p_body
        entry = self.p_entry
        if entry is None:
            if self.o_body:
                self._flush_body()  # the body's last pieces before its end
            if ctx is self.a_ctx and not self.a_body_done:
                if ctx.chunked:
                    self._body_out(LAST_CHUNK)  # trailers are dropped with the upstream's framing
                self.a_body_done = True
                if self.a_up is not None:
                    self.a_up._sent()  # the upstream timeout starts now (SPEC §8)
        else:
            if ctx.chunked:
                entry.body.append(LAST_CHUNK)
            entry.done = True
        self.p_ctx = None
        self.p_entry = None
        return 0

    # ------------------------------------------------------------------ the active exchange
    cdef int _activate(self, RequestContext ctx, list body, bint done, bint expect) except -1:
        self.a_ctx = ctx
        self.a_up = None
        self.a_pending = body if body is not None else []
        self.a_pending_size = 0
        self.a_body_done = done
        self.a_expect = expect and not done and not self.a_pending
        router = self.worker.runtime.router
        if type(router) is Router:
            route = (<Router>router).match(ctx.method, ctx.host, ctx.path)  # a C call
        else:
            route = router.match(ctx.method, ctx.host, ctx.path)
        if type(route) is LocalReply:
            self._local(route)
            return 0
        if route is not self.c_route:
            self._route_plan(route)
        ctx.route = route
        ctx.service = self.c_service
        if self.c_filtered:
            result = self.c_chain.run_access(ctx)
            if result is not None:
                if type(result) is LocalReply:
                    self._local(result)
                else:
                    # The only per-request task: a filter waiting on I/O (Redis, JWKS...).
                    self.a_task = self.loop.create_task(self._access_wait(ctx, result))
                return 0
        # The proxy step, inlined for the common case (a pooled connection, no Expect).
        if self.a_expect:
            self._proxy(ctx)
            return 0
        target = self.c_service.pick(ctx)
        if target is None:
            self._local(replies.unavailable(ctx))
            return 0
        ctx.upstream_target = target
        ctx.upstream_start = self.l_time()   # the attempt starts now (connect time counts)
        pool = target.pool
        # (a C call for the real pool class and its subclasses; cpdef still honours overrides)
        up = (<UpstreamPool>pool).acquire() if isinstance(pool, UpstreamPool) else pool.acquire()
        if up is not None:
            self._send(up)
        else:
            pool.connect(self)
        return 0

    cdef int _route_plan(self, object route) except -1:
        """Read a newly matched route's fields once (see c_route in downstream.pxd)."""
        chain = route.chain
        self.c_route = route
        self.c_service = route.service
        self.c_chain = chain
        self.c_filtered = bool(chain.filters)
        self.c_timeout = route.timeout
        self.c_strip = bool(route.strip_prefix)
        return 0

    cdef bint _filtered(self, RequestContext ctx) except -1:
        """Whether ctx's route has filters (ctx.route is re-checked: a filter may have changed it)."""
        route = ctx.route
        if route is None:
            return False
        if route is self.c_route:
            return self.c_filtered
        return bool(route.chain.filters)

    async def _access_wait(self, RequestContext ctx, pending):
        try:
            result = await pending
        except Exception:  # noqa: BLE001
            log.exception("access filter failed")
            result = replies.INTERNAL_ERROR
        self.a_task = None
        if self.closing or ctx is not self.a_ctx:
            return
        if result is not None:
            self._local(result)
        else:
            self._proxy(ctx)

    cdef int _proxy(self, RequestContext ctx) except -1:
        target = ctx.route.service.pick(ctx)
        if target is None:
            self._local(replies.unavailable(ctx))
            return 0
        ctx.upstream_target = target
        ctx.upstream_start = self.l_time()
        if self.a_expect:
            # We answer the client's Expect ourselves (nginx does too) and never forward it: the
            # body then streams to whatever upstream connection we pick.
            self.a_expect = False
            assert self.transport is not None
            self.transport.write(CONTINUE_100)
        up = target.pool.acquire()
        if up is not None:
            self._send(up)
        else:
            target.pool.connect(self)
        return 0

    def upstream_ready(self, _UpstreamBase up) -> None:
        """A new connection from pool.connect (called from its task)."""
        if self.closing or self.a_ctx is None or self.a_up is not None:
            up.pool.release(up)
            return
        self._send(up)

    cdef int _send(self, _UpstreamBase up) except -1:
        cdef RequestContext ctx = self.a_ctx
        assert ctx is not None
        self.a_up = up
        route = ctx.route
        if route is not self.c_route:
            self._route_plan(route)
        head = self.builder.upstream_head(ctx, self.c_strip)
        if self.a_pending:
            head = b"".join([head, *self.a_pending])
            self.a_pending = []
            self.a_pending_size = 0
        up._start(self, ctx, head, self.c_timeout or self.t_upstream)
        if self.gate.reasons:
            self.gate.resume(PAUSE_BUFFER)
        if self.w_deadline != INF:
            up._pause_reading()  # the client is already backed up
        return 0

    cdef int _body_out(self, bytes data) except -1:
        if self.closing:
            return 0
        up = self.a_up
        if up is not None:
            up._send(data)
        elif self.a_ctx is not None:
            self.a_pending.append(data)
            self.a_pending_size += len(data)
            if self.a_pending_size > MAX_BUFFERED_BODY:
                self.gate.pause(PAUSE_BUFFER)
        return 0

    def write_response(self, data: bytes) -> None:
        """Response bytes from the UpstreamProtocol (one call per upstream read)."""
        ctx = self.a_ctx
        if ctx is not None:
            ctx.bytes_out += len(data)
        if self.transport is not None:
            self.transport.write(data)

    def upstream_failed(self, kind: str) -> None:
        self._upstream_failed(kind)

    cdef int _upstream_failed(self, str kind) except -1:
        cdef RequestContext ctx = self.a_ctx
        self.a_up = None
        if ctx is None:
            return 0
        self._attempt_end(ctx, kind)
        if self.closing:
            return 0
        ctx.upstream_error = kind
        if ctx.status == 0:
            self._local(replies.UPSTREAM_REPLIES[kind])
        else:
            # Part of the response already went out: a second response is impossible, closing is
            # the only way to tell the client the body is incomplete.
            self._close()
        return 0

    cdef int _local(self, object reply) except -1:
        """Answer the active request ourselves."""
        cdef RequestContext ctx = self.a_ctx
        assert ctx is not None and self.transport is not None
        ctx.local_reply = reply
        ctx.status = reply.status
        if self.a_up is not None:  # an upstream exchange was abandoned (413/400 mid-body)
            self.a_up._abort()
            self.a_up = None
        self._attempt_end(ctx, "aborted")   # an open attempt (sending or connecting) is given up
        # Unread request body bytes could be parsed as a next request: close instead.
        keep = ctx.keep_alive and not reply.close and self.a_body_done
        ctx.keep_alive = keep
        headers = reply.headers
        route = ctx.route
        if route is not None and not route.chain.empty:
            headers = list(headers)
            route.chain.run_response(ctx, reply.status, headers)
        if ctx.response_headers:
            headers = headers + ctx.response_headers
        data = replies.render(reply, ctx.request_id, keep, headers, ctx.method == b"HEAD")
        ctx.bytes_out += len(data)
        self.transport.write(data)
        self._exchange_done()
        return 0

    def exchange_done(self) -> None:
        self._exchange_done()

    cdef int _exchange_done(self) except -1:
        """The active exchange sent its last byte: log it, then the next request or idle or close."""
        cdef RequestContext ctx = self.a_ctx
        cdef _Queued entry
        if ctx is None:
            return 0
        self.a_ctx = None
        self.a_up = None
        if ctx.upstream_end == 0.0 and ctx.upstream_target is not None:
            self._attempt_end(ctx, None)   # the upstream's response is complete
        if self._filtered(ctx):
            ctx.route.chain.run_log(ctx)
        if self.closing:
            return 0
        if not ctx.keep_alive or not self.a_body_done or self.worker.draining:
            self._close()
            return 0
        if self.gate.reasons & cPAUSE_UPSTREAM:
            # The upstream connection that was backed up is no longer ours (it answered before
            # draining the body, or failed): its resume_writing would never reach us.
            self.gate.resume(cPAUSE_UPSTREAM)
        if self.queue:
            entry = self.queue.popleft()
            if len(self.queue) < MAX_PIPELINE:
                self.gate.resume(PAUSE_PIPELINE)
            if entry is self.p_entry:
                self.p_entry = None  # its remaining body now streams straight to the exchange
            self.gate.resume(PAUSE_BUFFER)
            self._activate(entry.ctx, entry.body, entry.done, entry.expect)
        elif self.reject_after is not None:
            self._reject(self.reject_after)
        elif self.eof and not self._eof_keep():
            self._close()  # the client half-closed and its last complete request is answered
        elif self.p_kind == K_NONE and not self.in_head:
            self.p_kind = K_IDLE
            self.p_raw = 0
            self.p_deadline = self.ticker.now + self.t_keepalive
        return 0

    cdef int _attempt_end(self, RequestContext ctx, object kind) except -1:
        """One upstream attempt ended: kind None (a complete response, ctx.status), a failure kind
        (connect, timeout, reset, protocol) or "aborted" (we gave up on it: the client left, or we
        answered locally mid-body). Sets ctx.upstream_end, so each attempt is reported once, and
        tells the service when it observes outcomes (passive health, breakers, least_conn, EWMA)."""
        if ctx.upstream_end != 0.0 or ctx.upstream_start == 0.0:
            return 0   # already reported, or never sent (failed before a connection was ours)
        ctx.upstream_end = self.l_time()
        service = ctx.service
        if service is not None and service.observed:
            try:
                service.record(ctx, ctx.upstream_target, kind)
            except Exception:  # noqa: BLE001 - an observer must never break the exchange
                log.exception("service %s: recording an upstream outcome failed", service.name)
        return 0

    cdef int _log(self, RequestContext ctx) except -1:
        if self._filtered(ctx):
            ctx.route.chain.run_log(ctx)
        return 0

    # ------------------------------------------------------------------ rejection, close, timers
    cdef int _reject(self, object reply) except -1:
        """The request being parsed is refused: nothing more is read from this connection."""
        cdef RequestContext ctx
        cdef _Queued entry
        if self.closing:
            return 0
        self.gate.pause(PAUSE_CLOSING)
        self.p_kind = K_NONE
        self.in_head = False
        ctx = self.p_ctx
        if ctx is not None and ctx is self.a_ctx:
            # The active request itself failed mid-body (413 crossed, bad chunk, body stall). The
            # body bytes of this turn that came before the refusal go upstream first, as they
            # would have had they arrived in earlier reads: the upstream sees the same aborted
            # prefix however the bytes were split (tests/http/test_segmentation.py).
            if self.o_body:
                self._flush_body()
            if ctx.status == 0:
                self._local(reply if reply.close else _closing(reply))
            else:
                self._close()
            return 0
        if self.a_ctx is not None or self.queue:
            # Earlier pipelined requests are answered first; the rejection comes last, in order.
            for entry in list(self.queue):
                if entry is self.p_entry:
                    self.queue.remove(entry)
            self.reject_after = reply
            return 0
        self.reject_after = None
        rid = ctx.request_id if ctx is not None else new_request_id()
        assert self.transport is not None
        self.transport.write(replies.render(reply, rid, False))
        self._close()
        return 0

    cdef int _close(self) except -1:
        if not self.closing:
            self.closing = True
            if self.transport is not None:
                self.transport.close()
        return 0

    def shutdown(self) -> None:
        """Drain: close now if idle, else after the in-flight response (which says Connection: close)."""
        if self.a_ctx is None and not self.queue and not self.in_head and self.p_ctx is None:
            self._close()
        elif self.a_ctx is not None and self.a_ctx.status == 0:
            self.a_ctx.keep_alive = False

    def on_tick(self, double now) -> None:
        if now >= self.w_deadline:
            # The client stopped reading our response.
            self.closing = True
            if self.transport is not None:
                self.transport.abort()
            return
        if now < self.p_deadline or self.closing:
            return
        cdef int kind = self.p_kind
        if kind == K_IDLE:
            self._close()
        elif kind == K_HEADER:
            # The head's deadline is absolute; while an earlier exchange is still answering, the
            # 408 waits for its turn (reject_after), so responses stay in order.
            self._reject(replies.HEADER_TIMEOUT)
        elif kind == K_BODY and not self.gate.reasons:
            self._reject(replies.BODY_TIMEOUT)


def _closing(reply: LocalReply) -> LocalReply:
    return LocalReply(reply.status, reply.code, reply.message, reply.headers, reply.body,
                      reply.content_type, close=True)


class DownstreamProtocol(_DownstreamBase, asyncio.Protocol):
    """The asyncio-facing class: a cdef class cannot inherit asyncio.Protocol, this thin subclass
    keeps isinstance(p, asyncio.Protocol) true (asyncpg's layout). No instance dict."""

    __slots__ = ()
