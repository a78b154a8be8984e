"""UpstreamProtocol: one keep-alive connection to an upstream, driven by parser callbacks.

During an exchange the response is parsed by llhttp (driven from C: llhooks.pyx) and re-framed
straight into the downstream transport: callbacks append to `out`, and `data_received` flushes
it with one `write` per upstream read (head and first body bytes usually leave in one segment).
No task or future is involved; `_message_complete` only sets a flag and the exchange is finished
after the feed returns, so the next pipelined request never starts from inside a parser callback.

Flow control is coupled both ways: the downstream protocol pauses our reading when its own write
buffer is full (a slow client never makes us buffer a whole response), and our pause_writing pauses
the downstream's reading (a slow upstream never makes us buffer a whole request body).

An upstream is not fully trusted either: its response head has the request's limits
(GATEWAY_MAX_HEADER_BYTES, GATEWAY_MAX_HEADERS, and a raw-byte bound for a head or a trailer
section that never ends); over them the exchange fails with 502 and the connection is closed.
"""
import asyncio
import logging
import os
import weakref
from typing import Any

import httptools

from .flow import PAUSE_UPSTREAM, ticker_for
from gateway._fast.wire import response_head

from .wire import (
    CRLF,
    LAST_CHUNK,
    R_CONNECTION,
    R_CONTENT_LENGTH,
    R_DROP,
    R_FORWARD,
    R_TRANSFER_ENCODING,
    STATUS_LINES,
    status_line,
)

from cpython.bytearray cimport PyByteArray_AS_STRING
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from libc.stdint cimport uint64_t
from libc.string cimport memcpy

from gateway.http.reader cimport _ReaderBase
from gateway.pipeline.chain cimport FilterChain
from gateway.http.head cimport F_GONE, HeadTracker, HeaderView, forwarded_pairs, response_head_view
from gateway.http.llhooks cimport W_BODY, W_CHUNKS, W_MESSAGE_COMPLETE, feed, hooked_parser
from gateway.http.parser_stop cimport skip_body, stop_offset
from gateway.http.plain_response cimport PlainResponse, scan_plain_response
from gateway.http.llstate cimport response_keep_alive, status_code
from gateway.http.outlet cimport Outlet
from gateway.http.pool cimport UpstreamPool
from gateway.http.tunnel cimport Tunnel
from gateway.pipeline.context cimport RequestContext

# Typed, so a status line is a C dict lookup (the untyped global cost a `.get` attribute lookup).
cdef dict _STATUS_LINES = STATUS_LINES

log = logging.getLogger("gateway.http")
cdef double INF = float("inf")  # a C double: compared per request without a global lookup

cdef int cPAUSE_UPSTREAM = PAUSE_UPSTREAM

# Exchange states (C constants: compared without boxing; also exported for tests)
cdef enum:
    S_IDLE = 0          # in the pool (or fresh, not yet used)
    S_WAIT_HEAD = 1     # request sent, response head not complete: GATEWAY_UPSTREAM_TIMEOUT applies
                        # from the request's last byte (while the body uploads: see _start)
    S_BODY = 2          # response head sent downstream: GATEWAY_BODY_TIMEOUT applies to each stall

# Downstream framing of the response body
cdef enum:
    M_RAW = 0           # bytes as they come (Content-Length, or close-delimited to an HTTP/1.0 client)
    M_CHUNK = 1         # re-chunked (chunk extensions and trailers of the upstream are never forwarded)
    M_NONE = 2          # no body (HEAD, 204, 304)

_CLOSE = b"Connection: close\r\n"
_PLAIN_CONNECTION = (b"keep-alive", b"close")
_KEEP = b"Connection: keep-alive\r\n"
_TE_CHUNKED = b"Transfer-Encoding: chunked\r\n"


# wire.py's response header classes as C ints (an integer compare instead of a boxed one).
cdef int cR_FORWARD = R_FORWARD
cdef int cR_CONTENT_LENGTH = R_CONTENT_LENGTH
cdef int cR_TRANSFER_ENCODING = R_TRANSFER_ENCODING
cdef int cR_CONNECTION = R_CONNECTION
cdef int cR_DROP = R_DROP

class _HeadDone(Exception):
    """Stop the parser after the head of a response to HEAD (see on_headers_complete)."""


class _Switched(Exception):
    """Stop the parser after a 101 to an Upgrade we forwarded: what follows is not HTTP."""


class _HeadTooLarge(Exception):
    """A response head (or trailer section) over the field count or byte limit (see on_header)."""


# Reads of upstream responses (get_buffer): up to READ_SIZE bytes at once; SMALL_READ while the
# client's transport still holds bytes, or while BIG_KEPT_MAX large buffers are held by transports
# across the worker (bench/results/bodies.md measures the sizes; the internal variable is for that
# benchmark only).
READ_SIZE = int(os.environ.get("_GATEWAY_READ_SIZE", 262144))
SMALL_READ = 65536
BIG_KEPT_MAX = 16


class _Buffer(bytearray):
    """A read buffer that can be watched (weakref): the worker counts the large ones transports keep."""
    __slots__ = ("__weakref__",)


cdef class _ReadBuffer:
    """The worker's buffers for upstream reads, shared by every upstream connection: the loop reads
    one socket at a time, and a read is consumed (parsed, copied or written) before the next, so
    one buffer serves them all, reused read after read (no fresh memory per read) unless a
    client's transport kept it (buffer_updated): then the next read takes a new one, and the old
    one is freed once that transport has sent it.

    Memory held for clients that are behind is bounded two ways: a client whose transport still
    holds bytes gets small reads (SMALL_READ, about one write high-water mark), and at most
    BIG_KEPT_MAX large buffers may be held by transports at once across the worker (past that,
    every read is small until one is freed): a large read is held only when it found the client's
    transport empty yet the kernel could not take it all."""
    cdef object big
    cdef object small
    cdef object big_view
    cdef object small_view
    cdef object last             # the buffer the last get_buffer handed out
    cdef object last_view
    cdef public int big_kept     # large buffers held by transports now
    cdef object _freed           # weakref callback: one of them was freed
    cdef list _refs              # their weakrefs (kept alive until the callback; at most BIG_KEPT_MAX)

    def __init__(self) -> None:
        self.big_kept = 0
        self._freed = self._big_freed
        self._refs = []

    def _big_freed(self, ref) -> None:
        self.big_kept -= 1
        self._refs.remove(ref)

    cdef object take(self, bint small):
        if small or self.big_kept >= BIG_KEPT_MAX:
            if self.small is None:
                self.small = _Buffer(SMALL_READ)
                self.small_view = memoryview(self.small)
            self.last = self.small
            self.last_view = self.small_view
        else:
            if self.big is None:
                self.big = _Buffer(READ_SIZE)
                self.big_view = memoryview(self.big)
            self.last = self.big
            self.last_view = self.big_view
        return self.last_view

    cdef int given_away(self) except -1:
        """The last buffer is a transport's now: the next read takes a new one."""
        if self.last is self.big:
            self.big_kept += 1
            self._refs.append(weakref.ref(self.big, self._freed))
            self.big = None
            self.big_view = None
        else:
            self.small = None
            self.small_view = None
        self.last = None
        self.last_view = None
        return 0


cdef _ReadBuffer _reads = _ReadBuffer()


cdef bytes _field_line(bytes name, HeaderView view, Py_ssize_t i):
    """name + the value of view's field i + CRLF, in one allocation (was two concatenations)."""
    cdef Py_ssize_t n = PyBytes_GET_SIZE(name), v = view.f[i].vlen
    cdef bytes out = PyBytes_FromStringAndSize(NULL, n + v + 2)
    cdef char* p = PyBytes_AS_STRING(out)
    memcpy(p, PyBytes_AS_STRING(name), n)
    memcpy(p + n, PyBytes_AS_STRING(view.buf) + view.f[i].value, v)
    p[n + v] = 13
    p[n + v + 1] = 10
    return out


cdef class _UpstreamBase:
    """The protocol's state and logic; UpstreamProtocol (below) adds asyncio.Protocol as a base."""

    def __init__(self, UpstreamPool pool) -> None:
        self.pool = pool
        self.settings = pool.settings
        self.body_timeout = pool.settings.body_timeout
        s = pool.settings
        self.lim_hbytes = s.max_header_bytes
        self.lim_headers = s.max_headers
        # Raw bytes: the fields' bytes plus the status line and line ends, as for requests.
        self.lim_raw = s.max_header_bytes + s.max_uri_bytes
        self.h_bytes = 0
        self.h_raw = 0
        self.ticker = ticker_for(pool.loop)
        self.transport = None
        self.parser = self._new_parser()
        self.t_write = None
        self.down = None
        self.ctx = None
        # (the raw bound of a head, lim_raw, is checked in data_received before this one is reached)
        self.heads = HeadTracker(2 * self.lim_raw + 4096, self.lim_headers, self.lim_hbytes)
        self.view = None
        self.out = []
        self.state = S_IDLE
        self.mode = M_RAW
        self.status = 0
        self.head_request = False
        self.done = False
        self.broken = False      # never reused once set (error, incomplete exchange, Connection: close)
        self.until_close = False  # response body delimited by EOF
        self.deadline = INF
        self.paused = False
        self.timeout = 0.0
        self.sending = False
        self.held = -1.0
        self.w_paused = False
        self.uses = 0
        self.upgrading = False
        self.tunnel = None
        self.cl_body = False
        self.in_chunk = False

    # --- used by the pool and the downstream protocol (def for Python callers, cdef for C ones) ---
    def reusable(self) -> bool:
        return self._reusable()

    cdef bint _reusable(self):
        t = self.transport
        return self.down is None and not self.broken and t is not None and not t.is_closing()

    def start(self, down: _ReaderBase, ctx: RequestContext, data: bytes, timeout: float) -> None:
        self._start(down, ctx, data, timeout)

    def send(self, data: bytes) -> None:
        self._send(data)

    def abort(self) -> None:
        self._abort()

    def pause_reading(self) -> None:
        self._pause_reading()

    def resume_reading(self) -> None:
        self._resume_reading()

    cdef int _start(self, _ReaderBase down, RequestContext ctx, bytes data, double timeout) except -1:
        """Send a request head (and any body bytes already received) and wait for the response."""
        self.down = down
        self.ctx = ctx
        self.head_request = ctx.method == b"HEAD"
        self.heads.reset()
        self.view = None
        self.h_bytes = 0
        self.h_raw = 0
        self.state = S_WAIT_HEAD
        self.done = False
        self.uses += 1
        self.upgrading = down.u_ctx is ctx
        self.cl_body = False
        self.in_chunk = False
        self.timeout = timeout
        self.held = -1.0
        # SPEC §8: the upstream timeout runs from the last request byte written upstream, so an
        # upload never counts against it. While the body streams, a stalled client is the
        # downstream's body timeout (408) and an upstream that stops draining it is ours (below).
        self.sending = not down.a_body_done
        self.deadline = INF if self.sending else self.ticker.now + timeout
        assert self.transport is not None
        if data:   # (empty when the head waits for this read's body bytes: exchange.pyx's _send)
            self.t_write.write(data)
        if self.w_paused:
            # Pooled with its write buffer still full (it answered before draining a body): the
            # new client waits for the drain like the previous one did.
            self._backed_up(down)
        return 0

    cdef int _sent(self) except -1:
        """The request's last byte was written: the upstream timeout starts (unless the head came)."""
        self.sending = False
        if self.state == S_WAIT_HEAD:
            self._arm(self.timeout)
        return 0

    cdef int _arm(self, double seconds) except -1:
        """Set the deadline `seconds` from now (none when negative). While reading is paused it is
        held and starts when reading resumes: the stall is then the client's, not the upstream's."""
        if self.paused:
            self.held = seconds
        elif seconds < 0:
            self.deadline = INF
        else:
            self.deadline = self.ticker.now + seconds
        return 0

    cdef int _backed_up(self, _ReaderBase down) except -1:
        down.gate.pause(cPAUSE_UPSTREAM)
        if self.sending and self.state == S_WAIT_HEAD:
            # The upstream is not reading the body we send: bounded like a stalled body.
            self._arm(self.body_timeout)
        return 0

    cdef int _send(self, bytes data) except -1:
        assert self.transport is not None
        self.t_write.write(data)
        return 0

    cdef int _abort(self) except -1:
        """Drop this connection now (errors, downstream gone, pool closed): never reused."""
        self.broken = True
        self.down = None
        self.ctx = None
        if self.transport is not None:
            self.transport.abort()
        return 0

    cdef int _pause_reading(self) except -1:
        # The downstream's write buffer is full: stop reading so the response waits in the kernel
        # and in the upstream, not in our memory. The deadline is suspended meanwhile: the
        # stall is the client's, and the downstream protocol's send deadline covers it. Before the
        # head, what is left of the upstream timeout is held and runs again on resume.
        if not self.paused and self.transport is not None:
            self.paused = True
            if self.state == S_WAIT_HEAD and self.deadline != INF:
                self.held = max(self.deadline - self.ticker.now, 0.0)
            else:
                self.held = -1.0
            self.deadline = INF
            self.transport.pause_reading()
        return 0

    cdef int _resume_reading(self) except -1:
        if self.paused and self.transport is not None:
            self.paused = False
            if self.state == S_BODY:
                self.deadline = self.ticker.now + self.body_timeout
            elif self.state == S_WAIT_HEAD:
                self._arm(self.held)
            self.held = -1.0
            if not self.transport.is_closing():
                self.transport.resume_reading()
        return 0

    # --- asyncio.Protocol ---
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        self.t_write = Outlet(transport)
        self.deadline = self.ticker.now + self.pool.idle_timeout
        self.ticker.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.ticker.discard(self)
        self.broken = True
        if self.tunnel is not None:
            self.tunnel.lost()
            return
        if self.down is None:
            self.pool.forget(self)
            return
        if self.until_close and self.state == S_BODY and not self.done:
            # A response without Content-Length or chunking ends at EOF: that is its complete end.
            if self.mode == M_CHUNK:
                self.out.append(LAST_CHUNK)
            self.done = True
            self._flush()
            self._finish()
        else:
            self._flush()
            self._fail("reset")

    def eof_received(self) -> bool | None:
        if self.tunnel is not None:
            # A half-close passed on; the other way keeps flowing. Not over TLS (an https://
            # upstream's close_notify): uvloop closes that transport whatever we answer, and logs a
            # warning for True (the same as the client side, downstream.pyx eof_received).
            return self.tunnel.eof_from_up() and self.transport.get_extra_info("sslcontext") is None
        return None   # (asyncio's default: the transport closes, connection_lost follows)

    def pause_writing(self) -> None:
        if self.tunnel is not None:
            self.tunnel.up_paused()
            return
        self.w_paused = True
        if self.down is not None:
            self._backed_up(self.down)

    def resume_writing(self) -> None:
        if self.tunnel is not None:
            self.tunnel.up_resumed()
            return
        self.w_paused = False
        if self.down is not None:
            self.down.gate.resume(cPAUSE_UPSTREAM)
            if self.sending and self.state == S_WAIT_HEAD:
                self._arm(-1.0)  # draining again: the body's progress is the client's to keep

    # --- reads (asyncio.BufferedProtocol's two methods, which uvloop calls instead of data_received)
    def get_buffer(self, Py_ssize_t hint):
        """Where the next read lands: the worker's shared read buffer (see _ReadBuffer), or its
        first SMALL_READ bytes when the client is already behind (a read that cannot go out at
        once is held by the client's transport, so it is kept small: about one high-water mark)."""
        down = self.down
        return _reads.take(self.state == S_BODY and down is not None and down.transport is not None
                           and down.transport.get_write_buffer_size())

    def buffer_updated(self, Py_ssize_t n) -> None:
        cdef _ReadBuffer rb = _reads
        if self._pass_body(n):
            # Written from the read buffer itself. A transport that cannot send it all at once
            # keeps a view of the buffer (uvloop sends from it later, it does not copy): then the
            # buffer is the transport's, and the next read takes a new one.
            t = self._send_body(rb.last_view[:n], n)
            if t is not None and t.get_write_buffer_size():
                rb.given_away()
            return
        self._received(PyBytes_FromStringAndSize(PyByteArray_AS_STRING(<bytearray>rb.last), n))

    cdef bint _pass_body(self, Py_ssize_t n) except -1:
        """Whether the n bytes just read are all body, short of its end (a Content-Length body, or
        the inside of one upstream chunk): then llhttp counts them as read without seeing them
        (skip_body, parser_stop.pxd) and they go to the client as they are (_send_body): no copy
        of the read, no on_body copy, no join. Does what on_body does for them."""
        if self.state != S_BODY or self.out or self.tunnel is not None or self.down is None:
            return False
        if not (self.cl_body or self.in_chunk) or not skip_body(self.parser, n, -1):
            return False
        self.h_raw = 0
        if not self.paused:
            self.deadline = self.ticker.now + self.body_timeout
        return True

    cdef object _send_body(self, object data, Py_ssize_t n):
        """Send body bytes passed by _pass_body (re-framed as one chunk when we chunk); returns the
        client's transport, or None when it is gone."""
        cdef RequestContext ctx = self.ctx
        cdef _ReaderBase down = self.down
        t = down.transport
        if self.mode == M_CHUNK:
            size = b"%x\r\n" % n
            if ctx is not None:
                ctx.bytes_out += n + len(size) + 2
            if t is not None:
                t.writelines((size, data, CRLF))
        else:
            if ctx is not None:
                ctx.bytes_out += n
            if t is not None:
                down.t_write.write(data)
        return t

    cdef object _new_parser(self):
        """A response parser whose callbacks are this connection's (llhooks.pyx)."""
        return hooked_parser(True, self, W_BODY | W_MESSAGE_COMPLETE | W_CHUNKS)

    # (llhttp reports chunk boundaries; inside a chunk, reads can pass as they are: _pass_body)
    cdef int _chunk_header(self, uint64_t size) except -1:
        # (the last chunk, size 0, is not "inside": what follows it is trailers, never passed)
        self.in_chunk = size > 0
        return 0

    cdef int _chunk_complete(self) except -1:
        self.in_chunk = False
        return 0

    def data_received(self, data: bytes) -> None:
        self._received(data)   # (a TLS transport, or a test's fake one: plain reads)

    cdef int _received(self, bytes data) except -1:
        if self.tunnel is not None:
            self.tunnel.from_up(data)   # switched protocols: bytes, not HTTP
            return 0
        if self.down is None:
            # Bytes on an idle connection are never a response to anything: discard the connection.
            self.pool.forget(self)
            self._abort()
            return 0
        cdef list out
        if self._pass_body(len(data)):
            self._send_body(data, len(data))   # these very bytes (see buffer_updated)
            return 0
        cdef bint in_head = self.state == S_WAIT_HEAD
        if (in_head and self.h_raw == 0 and not self.head_request and not self.upgrading
                and self._plain_response(data)):
            return 0
        error = None
        rest = None
        if in_head:
            self.h_raw += len(data)
            self.heads.feeding(self.parser, data)
        parser = self.parser   # (a reference held while llhttp runs on it)
        try:
            feed(parser, data)
            if in_head and self.state == S_WAIT_HEAD and not self.done and self.heads.fed(True):
                raise httptools.HttpParserError("response head over the limits") from _HeadTooLarge()
        except httptools.HttpParserError as exc:
            # A callback's own exception arrives chained (llhooks.pyx wraps it).
            cause = exc.__cause__ or exc.__context__
            if isinstance(cause, _HeadDone):
                self._head_done(data)
            elif isinstance(cause, _Switched):
                offset = stop_offset(self.parser, data)   # (the layout is checked at import)
                if offset >= 0:
                    rest = data[offset:]   # the upstream's first bytes of the new protocol
                else:
                    error = "protocol"
                    self.out = []
                    self.ctx.status = 0
            else:
                error = "protocol"
                if isinstance(cause, _HeadTooLarge):
                    self._too_large("fields")
        out = self.out
        if error is None and not self.done and rest is None:
            # Bytes that did not complete a head, or (in the body) produced no body byte: a head
            # or a trailer section that never ends is cut here, even inside one endless field
            # (which llhttp hands over only when complete, and httptools joins piece by piece).
            if self.state != S_WAIT_HEAD:
                if out:
                    self.h_raw = 0  # the head or body bytes went out: progress
                else:
                    self.h_raw += len(data)
            if self.h_raw > self.lim_raw:
                error = "protocol"
                self._too_large("bytes")
        if self.done and error is None and rest is None and self.down is not None:
            self.down._response_complete()   # (before the last write: see there)
        if out:
            self._flush()   # one write per upstream read
        if error is not None:
            self._fail(error)
        elif rest is not None:
            self._handover(rest)
        elif self.done:
            self._finish()
        return 0

    cdef bint _plain_response(self, bytes data) except -1:
        """The whole response in this first read, taken without llhttp when its head is plain
        (plain_response.pyx: a strict subset of what llhttp accepts, read the same way) and
        exactly its Content-Length of body follows: what llhttp's callbacks would do with it
        (_headers_complete, _on_body, _message_complete), in one pass. False, with nothing done,
        for anything else, which llhttp then reads as before: a 1xx, 204 or 304, a response to
        HEAD or to an Upgrade, a body cut by the read or followed by more bytes, a head over the
        limits (refused there, with its log line). llhttp's state is untouched: it waits for the
        next response at its start, as after a message it read itself."""
        cdef PlainResponse r
        cdef HeaderView view
        cdef Py_ssize_t n = PyBytes_GET_SIZE(data)
        if self.out:
            return False
        view = scan_plain_response(data, &r, self.lim_headers, self.lim_hbytes)
        if (view is None or r.content_length < 0 or view.end + r.content_length != n
                or r.status < 200 or r.status > 599 or r.status == 204 or r.status == 304):
            return False
        self.h_raw = n
        self.h_bytes = view.field_bytes
        self.view = view
        try:
            self._final_head(r.status)
        except Exception:
            # (a response filter's error: the exchange fails as when it raises inside llhttp)
            self.view = None
            self._fail("protocol")
            return True
        self.view = None   # (its spans point into this read: not kept past it)
        if r.content_length:
            self.out.append(data[view.end:])
        if not r.keep_alive:
            self.broken = True
        self.done = True
        self.down._response_complete()   # (before the write: see there)
        self._flush()
        self._finish()
        return True

    cdef int _head_done(self, bytes data) except -1:
        """The head of a response to HEAD is complete.

        httptools cannot tell llhttp to skip the body of a response to HEAD, so the parser would
        wait for Content-Length bytes that never come: on_headers_complete stopped it. The
        connection stays reusable (with a fresh parser) only when this read ends exactly with the
        head's blank line and holds no other head (no 1xx before it): then no byte can be pending.
        Otherwise it is retired rather than guessing where the next response starts.
        """
        self.done = True
        if data.find(b"\r\n\r\n") == len(data) - 4:
            self.parser = self._new_parser()
        else:
            self.broken = True
        return 0

    cdef int _too_large(self, str what) except -1:
        log.error("upstream %s:%s sent a response head over the limit (%s; GATEWAY_MAX_HEADER_BYTES=%d,"
                  " GATEWAY_MAX_HEADERS=%d): 502, connection closed",
                  self.pool.host, self.pool.port, what, self.lim_hbytes, self.lim_headers)
        return 0

    # --- llhttp's callbacks (accumulate; no I/O except appending to `out`): ParserOwner's methods,
    # called from C (llhooks.pyx). (No on_message_begin: bytes after a complete response are caught
    # in _headers_complete (done already set) or, when they arrive later, by data_received on an
    # idle connection.)
    cdef int _headers_complete(self) except -1:
        if self.done:
            self.broken = True  # a second response to one request: never trust this connection again
            raise httptools.HttpParserError("response after the complete response")
        cdef int status = status_code(self.parser)
        cdef HeaderView view
        cdef Py_ssize_t i
        cdef int cls
        # The head's bytes, scanned in C now that llhttp accepted them (head.pyx). The field
        # bytes of interim (1xx) heads count with the final head's, the fields per head, as
        # when on_header counted them.
        view = self.heads.take_view(b"HTTP/", cR_FORWARD, False)
        if view is None:
            raise httptools.HttpParserError("response head not where llhttp ended it")
        self.h_bytes += view.field_bytes
        if view.n > self.lim_headers or self.h_bytes > self.lim_hbytes:
            raise _HeadTooLarge()
        self.heads.body(0)   # (a 1xx has no body: the next head follows it)
        self.view = view
        if status < 200:
            if status == 101:
                if not self.upgrading:
                    raise httptools.HttpParserError("101 Switching Protocols without an upgrade")
                self.out.append(self._switch_head())
                raise _Switched()
            # A 1xx has no body (RFC 9110 §15.2), but llhttp reads one when the head has framing
            # fields (except for 100, 102, 103): bytes that could pass for a response of their
            # own. Such an upstream is not trusted with the exchange: 502, connection discarded.
            for i in range(view.n):
                cls = view.f[i].cls
                if cls == cR_CONTENT_LENGTH or cls == cR_TRANSFER_ENCODING:
                    raise httptools.HttpParserError("interim response with framing fields")
            # 1xx are dropped like nginx does: our own 100 Continue was already sent downstream
            # when the request asked for it, and the final response follows on this connection.
            self.view = None
            return 0
        self._final_head(status)
        if self.head_request:
            raise _HeadDone()
        return 0

    cdef int _final_head(self, int status) except -1:
        """The final response head (self.view) goes out: the body follows, under its timeout."""
        self.status = status
        self.state = S_BODY
        self.deadline = self.ticker.now + self.body_timeout
        self.out.append(self._response_head(status))
        return 0

    cdef int _on_body(self, bytes body) except -1:
        if self.state != S_BODY:  # (a 1xx body: on_headers_complete refuses the heads that have one)
            raise httptools.HttpParserError("body bytes outside a final response")
        if self.mode == M_CHUNK:
            self.out += (b"%x\r\n" % len(body), body, CRLF)
        else:
            self.out.append(body)
        if not self.paused:
            self.deadline = self.ticker.now + self.body_timeout
        return 0

    cdef int _message_complete(self) except -1:
        if self.state != S_BODY:
            return 0  # the end of a 1xx: the final response follows
        if self.mode == M_CHUNK:
            self.out.append(LAST_CHUNK)
        if not response_keep_alive(self.parser):
            self.broken = True
        self.done = True
        return 0

    # --- response head ---
    cdef bytes _response_head(self, int status):
        cdef RequestContext ctx = self.ctx
        assert ctx is not None
        cdef int cls
        cdef bint keep
        cdef HeaderView view = self.view
        cdef Py_ssize_t i, cl_i = -1
        te = None
        conn = None
        for i in range(view.n):
            # Classified in C by scan_head: end-to-end fields stay spans, written as they came.
            cls = view.f[i].cls
            if cls == cR_FORWARD:
                continue
            elif cls == cR_CONTENT_LENGTH:
                cl_i = i   # (llhttp allows one; its value becomes bytes only where it is needed)
            elif cls == cR_TRANSFER_ENCODING:
                te = view.c_value(i) if te is None else te + b"," + view.c_value(i)
            elif cls == cR_CONNECTION:
                conn = view.c_value(i) if conn is None else conn + b"," + view.c_value(i)
            # else R_DROP: hop-by-hop, Server, X-Powered-By, X-Request-Id
        # (the exact common spellings first: no lower() copy for nginx's "keep-alive")
        if conn is not None and conn != b"keep-alive" and conn != b"close" and conn.lower() not in _PLAIN_CONNECTION:
            # Only a Connection header naming other fields costs a filtering pass.
            named = {t.strip().lower() for t in conn.split(b",")}
            for i in range(view.n):
                if view.f[i].cls == cR_FORWARD and view.c_lname(i) in named:
                    view.f[i].cls = F_GONE

        keep = ctx.keep_alive
        self.until_close = False
        self.cl_body = False
        if self.head_request or status == 204 or status == 304:
            self.mode = M_NONE
            # A 304 or a response to HEAD may describe the length of the representation.
            framing = b"Content-Length: %d\r\n" % int(view.c_value(cl_i)) if cl_i >= 0 and status != 204 else b""
        elif cl_i >= 0:
            self.mode = M_RAW
            self.cl_body = True
            # Canonical decimal: llhttp checked the digits; only leading zeros need rewriting.
            if PyBytes_AS_STRING(view.buf)[view.f[cl_i].value] != 48:   # not a leading '0'
                framing = _field_line(b"Content-Length: ", view, cl_i)
            else:
                framing = b"Content-Length: %d\r\n" % int(view.c_value(cl_i))
        else:
            if te is not None and te.rstrip(b" ").lower() != b"chunked":
                # Only `chunked` itself, spelled as llhttp decodes it (nothing but spaces after the
                # token). Another coding would reach the client undeclared, or declared to an HTTP/1.0
                # client that cannot take it; the client never asked for one (its TE field is not
                # forwarded). 502 like nginx, before anything of the response went out.
                raise httptools.HttpParserError("transfer-coding other than chunked")
            self.until_close = te is None
            if ctx.http_version == b"1.1":
                self.mode = M_CHUNK
                framing = _TE_CHUNKED
            else:
                # HTTP/1.0 has no chunking: the body ends when we close the connection.
                self.mode = M_RAW
                framing = b""
                keep = False
        if self.until_close:
            self.broken = True
        ctx.keep_alive = keep
        ctx.status = status

        line = _STATUS_LINES.get(status) or status_line(status)
        tail = _CLOSE if not keep else (_KEEP if ctx.http_version == b"1.0" else b"")
        chain = self._filter_chain(ctx)
        if chain is not None:
            # Response filters get (and may edit) the forwarded fields as a list of pairs, built
            # only for a route that has one: an access-only chain (JWT, a rate limit) takes the
            # common path below, whose bytes are the same when no filter edits them.
            if type(chain) is not FilterChain or (<FilterChain>chain)._response:
                fwd = forwarded_pairs(view)
                try:
                    if type(chain) is FilterChain:
                        (<FilterChain>chain).c_run_response(ctx, status, fwd)   # a C call
                    else:
                        chain.run_response(ctx, status, fwd)
                except Exception:
                    # The exchange fails (the caller's `protocol` path). Nothing of this response
                    # has gone out (a 1xx is never forwarded): with the status cleared the client
                    # is answered 502, and with filters_ran cleared that 502 runs no response
                    # filter (the one that failed would fail again on it). Without the log line
                    # the filter's own error would be nowhere an operator can find it.
                    ctx.status = 0
                    ctx.filters_ran = 0
                    log.exception("request %s: response filter failed: 502",
                                  bytes(ctx.request_id).decode("latin-1"))
                    raise
                if ctx.response_headers:
                    fwd += ctx.response_headers
                return response_head(line, fwd, framing, ctx.request_id, tail)
        # The common path: the upstream's fields copied from its head, the gateway's spliced in.
        return response_head_view(line, view, ctx.response_headers, framing, ctx.request_id, tail)

    cdef object _filter_chain(self, RequestContext ctx):
        """ctx.route's FilterChain when it has filters, else None: from the client connection's
        cached route plan (no attribute reads) when there is a client connection."""
        down = self.down
        if down is not None:
            return down._chain(ctx) if down._filtered(ctx) else None
        chain = ctx.route.chain
        return chain if chain.filters else None

    cdef bytes _switch_head(self):
        """The 101 for the client: the upstream's end-to-end fields (Sec-WebSocket-Accept...),
        its Upgrade, and Connection: upgrade; no framing (there is no body)."""
        cdef RequestContext ctx = self.ctx
        cdef HeaderView view = self.view
        cdef list fwd = forwarded_pairs(view)
        cdef Py_ssize_t i = view.c_find(b"upgrade", 7, 0, True)
        upgrade = None
        while i >= 0:
            upgrade = view.c_value(i) if upgrade is None else upgrade + b", " + view.c_value(i)
            i = view.c_find(b"upgrade", 7, i + 1, True)
        if upgrade is None:   # RFC 9110 §15.2.2: a 101 names the protocol it switches to
            raise httptools.HttpParserError("101 Switching Protocols without Upgrade")
        ctx.status = 101
        self.status = 101
        chain = self._filter_chain(ctx)
        if chain is not None:
            if type(chain) is FilterChain:
                (<FilterChain>chain).c_run_response(ctx, 101, fwd)   # a C call
            else:
                chain.run_response(ctx, 101, fwd)
        if ctx.response_headers:
            fwd += ctx.response_headers
        line = _STATUS_LINES.get(101) or status_line(101)
        return response_head(line, fwd, b"", ctx.request_id, b"Connection: upgrade\r\nUpgrade: " + upgrade + CRLF)

    cdef int _handover(self, bytes rest) except -1:
        """After the 101 went out: this connection leaves the pool for good and becomes the
        upstream side of the downstream's tunnel (tunnel.pyx owns its flow control from now on)."""
        down = self.down
        self.down = None
        self.ctx = None
        self.broken = True
        self.state = S_IDLE
        self.deadline = INF
        self.paused = False    # (a pause stays in force: the tunnel resumes it when the client drains)
        self.ticker.discard(self)
        assert down is not None
        down._switch(self, rest)
        return 0

    # --- end of an exchange ---
    cdef int _flush(self) except -1:
        """The response bytes gathered (head and body bytes, chunks and their framing) to the
        client, in one write: Outlet.write_list (one writev, or joined when small)."""
        cdef Py_ssize_t size = 0, i
        cdef list out = self.out
        if out:
            self.out = []
            down = self.down
            if down is not None:
                if down.transport is not None:
                    size = down.t_write.write_list(out)
                else:
                    for i in range(len(out)):
                        size += len(<bytes>out[i])
                ctx = self.ctx
                if ctx is not None:
                    ctx.bytes_out += size
        return 0

    cdef int _finish(self) except -1:
        down = self.down
        self.down = None
        self.ctx = None
        self.state = S_IDLE
        self.status = 0
        if self.paused:
            self._resume_reading()
        assert down is not None
        # Reuse only after a complete exchange: the whole request went out (the downstream body
        # is done) and the whole response came back; anything else leaves unknown bytes in flight.
        if self.broken or not down.a_body_done:
            self._abort()
        else:
            self.deadline = self.ticker.now + self.pool.idle_timeout
            self.pool.release(self)
        down._exchange_done()
        return 0

    cdef int _fail(self, str kind) except -1:
        down = self.down
        # A pooled connection that the upstream closed (or reset) before any byte of the response:
        # it was most likely closing its idle connection as our request went out, so the request
        # was never processed (nginx and Envoy send it again on a fresh connection; see
        # downstream._upstream_failed).
        cdef bint stale = kind == "reset" and self.uses > 1 and self.state == S_WAIT_HEAD and self.h_raw == 0
        self._abort()
        if down is not None:
            down._upstream_failed(kind, stale)
        return 0

    def on_tick(self, now: float) -> None:
        if now < self.deadline:
            return
        if self.down is None:
            self.pool.forget(self)  # idle too long in the pool
            self._abort()
        else:
            self._fail("timeout")


class UpstreamProtocol(_UpstreamBase, asyncio.BufferedProtocol):
    """The asyncio-facing class: a cdef class cannot inherit asyncio.BufferedProtocol, this thin
    subclass keeps isinstance(up, asyncio.BufferedProtocol) true (asyncpg's layout): uvloop then
    reads into get_buffer's buffer (it does so only for a protocol that is not an
    asyncio.Protocol). data_received stays for transports that deliver bytes (TLS). No instance
    dict."""

    __slots__ = ()
