"""How a client connection's reads reach the request parser: _ReaderBase, the base of
_DownstreamBase (downstream.pyx), holding the connection's state (reader.pxd).

A read is fed to llhttp in one call unless it could overfill the pipelining queue or hold a lot of
work (`_plan`): then in slices, stopping as soon as reading pauses or the turn's work bound is
reached; the rest waits in `p_rest` for a later loop turn (`_continue`). So memory per connection
is bounded by the pipeline queue and the body buffers, not by the size of a read, and no
connection keeps the loop for more than about a millisecond.

The parser is replaced in two places, both here: after the head of a chunked request (llhttp is
stopped at the byte after the head, parser_stop.pxd, and the ChunkDecoder reads the body) and after
an Upgrade request (llhttp stops there by itself; what follows is held until the exchange says
whether the protocol switched). What a parsed request becomes is downstream.pyx's business.
"""
import logging

import httptools

from cpython.bytes cimport PyBytes_AS_STRING

from gateway.http.upstream cimport _UpstreamBase
from gateway.pipeline.context cimport RequestContext

from . import replies
from .errors import RequestRejected
from .flow import PAUSE_TURN, PAUSE_UPGRADE

from gateway.http.chunked cimport D_END, D_FAILED, D_FIRST, ChunkDecoder
from gateway.http.flow cimport ReadGate
from gateway.http.head cimport find_crlfcrlf
from gateway.http.llhooks cimport W_BODY, W_MESSAGE_BEGIN, W_MESSAGE_COMPLETE, W_URL, feed, hooked_parser
from gateway.http.parser_stop cimport skip_body, stop_offset

log = logging.getLogger("gateway.http")
cdef int cPAUSE_TURN = PAUSE_TURN
cdef int cPAUSE_UPGRADE = PAUSE_UPGRADE

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


class _TakeOver(Exception):
    """Raised by on_headers_complete to stop llhttp right after the head of a chunked request."""


class _BodyProbe:
    def __init__(self) -> None:
        self.body = []
        self.complete = 0

    def on_body(self, body: bytes) -> None:
        self.body.append(body)

    def on_message_complete(self) -> None:
        self.complete += 1


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
    # skip_body: bytes of a Content-Length body counted without feeding them, for both parsers.
    for cls, head in ((httptools.HttpRequestParser, b"POST / HTTP/1.1\r\nContent-Length: 12\r\n\r\n"),
                      (httptools.HttpResponseParser, b"HTTP/1.1 200 OK\r\nContent-Length: 12\r\n\r\n")):
        probe = _BodyProbe()
        parser = cls(probe)
        parser.feed_data(head + b"abc")
        ok = skip_body(parser, 4, 9) and not skip_body(parser, 5, 5)   # (the last bytes are fed)
        parser.feed_data(b"12345")
        if not ok or probe.body != [b"abc", b"12345"] or probe.complete != 1:
            raise ImportError(f"httptools {httptools.__version__}: llhttp's content_length is not where "
                              "gateway/http/parser_stop.pxd reads it (checked with httptools 0.9)")


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

cdef class _Queued:
    """A pipelined request waiting for the active exchange to finish (uncommon path)."""

    def __init__(self, RequestContext ctx, bint expect, bint done) -> None:
        self.ctx = ctx
        self.body = []
        self.size = 0
        self.done = done
        self.expect = expect


cdef class _ReaderBase:
    """The connection's state (reader.pxd) and its read path; the steps a parsed request takes
    (_dispatch, _message_complete, _reject...) are _DownstreamBase's (these stubs are never run)."""

    def data_received(self, data: bytes) -> None:
        if self.tunnel is not None:
            self.tunnel.from_down(data)   # switched protocols: bytes, not HTTP
            return
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
        request, or a Content-Length body) is one slice: one feed, as before."""
        cdef Py_ssize_t n = len(data)
        self.p_work = 0
        self.p_turn = True
        try:
            self._consume_turn(data, n)
        finally:
            self.p_turn = False
        if self.o_body or self.o_head is not None:
            self._flush_body()
        return 0

    cdef int _consume_turn(self, bytes data, Py_ssize_t n) except -1:
        cdef Py_ssize_t pos = 0, end
        cdef ReadGate gate = self.gate
        cdef RequestContext ctx
        while pos < n and not self.closing:
            if gate.reasons:
                rest = data[pos:] if pos else data
                # (after an Upgrade request _feed already holds the rest of its slice: keep order)
                self.p_rest = self.p_rest + rest if self.p_rest else rest
                break
            if self.p_work >= WORK_PER_TURN:
                self.p_rest = data[pos:]
                gate.pause(cPAUSE_TURN)
                self._resume_soon()
                break
            end = self._plan(data, pos, n)
            ctx = self.p_ctx
            if (self.p_kind == K_BODY and ctx is not None and not ctx.chunked
                    and skip_body(self.parser, end - pos, ctx.content_length - self.p_body)):
                # Inside a Content-Length body, short of its end: the bytes go on as they are
                # (the read itself when it is all body), not as llhttp's on_body copy.
                self.heads.skipped(end - pos)   # (the head tracker counts them as fed)
                try:
                    self._on_body(data if pos == 0 and end == n else data[pos:end])
                except RequestRejected as exc:
                    self._reject(exc.reply)
            else:
                self._feed(data if pos == 0 and end == n else data[pos:end])
            pos = end
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
                return pos + self._body_slice(avail)
        left = self.chunk.data_left()
        if left > 0:
            # Inside a chunk's data: these bytes are body whatever they hold (no head can end in
            # them, no scan for one), and the decoder passes them on as they are (one piece).
            # Held body (queued, or no upstream yet) is bounded as for Content-Length above.
            if left < avail:
                avail = <Py_ssize_t>left
            return pos + self._body_slice(avail)
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
            i = find_crlfcrlf(PyBytes_AS_STRING(data), i, pos + avail)
            if i < 0:
                return pos + avail
            if k == 0:
                return i + 3  # the last byte of this head end goes in the next slice
            k -= 1
            i += 1

    cdef Py_ssize_t _body_slice(self, Py_ssize_t avail) noexcept:
        """How many of `avail` body bytes to take now. Body held here (a queued request's, or
        while no upstream is ready) stops one byte past its bound, where reading pauses: not a
        whole read past it. Bytes for a ready upstream are all taken."""
        cdef Py_ssize_t room
        if self.p_entry is not None:
            room = cMAX_BUFFERED_BODY + 1 - self.p_entry.size
        elif self.a_up is None:
            room = cMAX_BUFFERED_BODY + 1 - self.a_pending_size
        else:
            return avail
        if room < 1:
            room = 1
        return room if room < avail else avail

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
        """Write the body pieces of this turn to the active upstream in one write (one chunk),
        after the request's head when it waited for them (o_head)."""
        cdef list out = self.o_body
        cdef Py_ssize_t size = self.o_size
        cdef RequestContext ctx = self.a_ctx
        head = self.o_head
        self.o_body = []
        self.o_size = 0
        self.o_head = None
        up = self.a_up
        if up is None or ctx is None or self.closing:
            return 0  # the exchange was abandoned (413, upstream failure): the bytes go nowhere
        if out:
            if ctx.chunked:
                # Chunk extensions never survive: we re-frame what the ChunkDecoder hands us (one chunk a turn).
                out.insert(0, b"%x\r\n" % size)
                out.append(b"\r\n")
            if self.a_sent is not None:
                for data in out:
                    self._keep_sent(data)
        if head is not None:
            out.insert(0, head)
        if not out:
            return 0
        assert up.transport is not None
        up.t_write.write_list(out)   # (outlet.pyx: one writev, or joined when small)
        return 0

    cdef int _keep_sent(self, bytes data) except -1:
        """Keep a copy of request body bytes written upstream, so that the request can be sent
        again (a stale pooled connection, a retry) while the body is small; a larger one is not
        kept (bounded like the other body buffers) and such a request is never sent twice."""
        self.a_sent_size += len(data)
        if self.a_sent_size > cMAX_BUFFERED_BODY:
            self.a_sent = None
        else:
            self.a_sent.append(data)
        return 0

    cdef int _feed(self, bytes data) except -1:
        self.p_done = False
        cdef ChunkDecoder chunk = self.chunk
        cdef int event
        while True:
            if chunk.active():
                # Inside a chunked request body (see on_headers_complete).
                try:
                    used = chunk.feed(data)
                    if chunk.body is not None:
                        self.p_work += chunk.pieces
                        self._on_body(chunk.body)
                    event = chunk.event
                    if event == D_FAILED:
                        if chunk.reply is not None:
                            self._reject(chunk.reply)
                        break
                    if event == D_FIRST:
                        self._dispatch(self.p_ctx, True, False)
                    elif event == D_END:
                        self._message_complete()
                except RequestRejected as exc:
                    self._reject(exc.reply)
                    break
                except Exception:  # noqa: BLE001 - nothing may escape a protocol callback
                    log.exception("request handling failed")
                    self._reject(replies.INTERNAL_ERROR)
                    break
                if used == len(data) or self.closing:
                    break
                data = data[used:]
                if chunk.active():
                    continue  # (after the first chunk-size line: the body goes on)
                # the body ended: llhttp reads the next request
            parser = self.parser   # (a reference held while llhttp runs on it)
            self.heads.feeding(parser, data)
            try:
                feed(parser, data)
                if self.heads.fed(self.in_head):
                    # a head not complete yet is over a limit: refused before it ends (head.pyx)
                    raise RequestRejected(replies.HEADERS_TOO_LARGE)
            except RequestRejected as exc:
                self._reject(exc.reply)
            except httptools.HttpParserUpgrade as exc:
                # llhttp stops after the head of an `Connection: upgrade` request (it has no body:
                # on_headers_complete refused those). For an Upgrade we may tunnel (u_ctx), what
                # follows is another protocol if the upstream switches: it is held, unparsed, and
                # nothing more is read until the answer (101: the tunnel takes it; anything else
                # closes the connection). An ignored Upgrade (h2c) was proxied as a plain request:
                # parsing goes on with a fresh parser at the next byte.
                offset = exc.args[0] if exc.args and isinstance(exc.args[0], int) else len(data)
                self.parser = self._new_parser()
                self._message_complete()
                data = data[offset:]
                if self.u_ctx is not None and not self.closing:
                    self.p_rest = data
                    self.gate.pause(cPAUSE_UPGRADE)
                    break
                if data and not self.closing:
                    continue
            except httptools.HttpParserError as exc:
                # An exception raised by a callback arrives wrapped in HttpParserCallbackError,
                # chained (llhooks.pyx): our RequestRejected carries the reply to send.
                cause = exc.__cause__ or exc.__context__
                if type(cause) is _TakeOver:
                    # on_headers_complete gave the chunked body to the ChunkDecoder: llhttp stopped right
                    # after the head; a fresh parser takes over again after the body.
                    offset = stop_offset(self.parser, data)
                    self.parser = self._new_parser()
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
                    if self.in_head and self.heads.failed_at(stop_offset(self.parser, data)):
                        reply = replies.HEADERS_TOO_LARGE   # its complete fields were over a limit
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

    cdef object _new_parser(self):
        """A request parser whose callbacks are this connection's (llhooks.pyx; no chunk
        callbacks: a chunked body is the ChunkDecoder's, llhttp stops after its head)."""
        return hooked_parser(False, self, W_MESSAGE_BEGIN | W_URL | W_BODY | W_MESSAGE_COMPLETE)

    # --- defined by _DownstreamBase ---
    cdef int _dispatch(self, RequestContext ctx, bint has_body, bint expect) except -1:
        raise NotImplementedError

    cdef int _reject(self, object reply) except -1:
        raise NotImplementedError

    cdef bint _eof_keep(self) except -1:
        raise NotImplementedError

    cdef int _close(self) except -1:
        raise NotImplementedError

    cdef bint _filtered(self, RequestContext ctx) except -1:
        raise NotImplementedError

    cdef object _chain(self, RequestContext ctx):
        raise NotImplementedError

    cdef int _upstream_failed(self, str kind, bint stale) except -1:
        raise NotImplementedError

    cdef int _response_complete(self) except -1:
        raise NotImplementedError

    cdef int _exchange_done(self) except -1:
        raise NotImplementedError

    cdef int _switch(self, _UpstreamBase up, bytes rest) except -1:
        raise NotImplementedError
