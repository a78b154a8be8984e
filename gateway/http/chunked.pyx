"""ChunkDecoder: a chunked request body (RFC 9112 §7.1), decoded with the bounds llhttp lacks.

llhttp has no bound on a chunk-size line and reads any chunk size up to 2^64 as body, so the
downstream protocol stops llhttp right after the head of a chunked request (parser_stop.pxd) and
hands the body's bytes to this decoder, then a fresh parser reads on after the body.

As strict as llhttp (no whitespace around the size, CRLF only, extensions as tokens or quoted
strings), with bounds: a chunk size that would take the body past the limit is a 413 at the digit
that does it, a chunk-size line over MAX_CHUNK_LINE a 400, a trailer section over the head limit a
431: nothing after such a line is read as body. Every verdict falls on a byte, so it is the same
however the bytes are split. The data of one read goes on as one piece (`body`); extensions and
trailers are dropped (the downstream protocol re-frames what it forwards).

No I/O and no callbacks: feed() says what it stopped at (`event`), the protocol acts on it. That
keeps this file about bytes only, testable on its own.
"""
from cpython.bytes cimport PyBytes_AS_STRING
from cpython.object cimport PyObject
from cpython.ref cimport Py_DECREF
from libc.string cimport memcpy

from gateway.http.charclass cimport is_tchar

cdef extern from "Python.h":
    # (raw forms: the body is built in place, then shrunk to the bytes it holds)
    PyObject* _new_bytes "PyBytes_FromStringAndSize"(const char* s, Py_ssize_t n) except NULL
    char* _bytes_ptr "PyBytes_AS_STRING"(PyObject* o)
    int _PyBytes_Resize(PyObject** o, Py_ssize_t n) except -1

from . import replies

cdef Py_ssize_t C_MAX_LINE = 4096  # bytes of a chunk-size line, extensions included (Node: 16 KiB)
MAX_CHUNK_LINE = C_MAX_LINE
MORE = D_MORE
FIRST = D_FIRST
END = D_END
FAILED = D_FAILED

cdef enum:
    C_OFF = 0           # not inside a chunked body
    C_SIZE = 1          # chunk-size digits (line counts the whole line)
    # chunk extensions, parsed as llhttp parses them: *( ";" name [ "=" ( token / quoted-string ) ] )
    C_EXT = 2           # just after ';'
    C_EXT_NAME = 3
    C_EXT_VALUE = 4     # a token value
    C_EXT_Q = 5         # inside a quoted string
    C_EXT_QP = 6        # after a backslash inside a quoted string
    C_EXT_QDONE = 7     # after the closing quote
    C_SIZE_LF = 8       # the CR ending the chunk-size line was read
    C_DATA = 9          # size bytes of chunk data left
    C_DATA_CR = 10      # CRLF after the chunk data
    C_DATA_LF = 11
    C_TRAILER = 12      # start of a trailer line, or of the empty line ending the body
    C_FIELD = 13        # trailer field name
    C_VALUE = 14        # trailer field value
    C_TRAILER_LF = 15
    C_END_LF = 16
    C_FAILED = 17       # refused: nothing more is read

cdef signed char _HEX[256]       # hex digit value, -1 for other bytes
cdef int _i
cdef unsigned char _c
for _i in range(256):
    _HEX[_i] = -1
for _i, _c in enumerate(b"0123456789abcdef"):
    _HEX[_c] = _i
for _i, _c in enumerate(b"ABCDEF"):
    _HEX[_c] = 10 + _i


cdef inline bint _field_char(unsigned char c) noexcept:
    """HTAB, SP, VCHAR or obs-text: what a field value or a quoted string may hold (no CTL, no DEL)."""
    return c == 9 or (c >= 32 and c != 127)


cdef class ChunkDecoder:
    """One per connection; start() at each chunked head, then feed() every read of the body."""

    def __init__(self, long long lim_body, Py_ssize_t lim_trailer) -> None:
        self.state = C_OFF
        self.lim_body = lim_body
        self.lim_trailer = lim_trailer
        self.event = D_MORE
        self.reply = None
        self.body = None
        self.pieces = 0

    cdef bint active(self) noexcept:
        return self.state != C_OFF

    cdef long long data_left(self) noexcept:
        """Bytes of chunk data the next feed() will take before any framing byte (0: none)."""
        return self.size if self.state == C_DATA else 0

    cdef int start(self, bint defer) except -1:
        """A chunked body begins; with `defer`, feed() stops after the first valid chunk-size line."""
        self.state = C_SIZE
        self.size = 0
        self.total = 0
        self.line = 0
        self.defer = defer
        self.reply = None
        return 0

    def begin(self, defer: bool = False) -> None:  # (for tests)
        self.start(defer)

    def decode(self, data: bytes) -> int:  # (for tests)
        return self.feed(data)

    cdef Py_ssize_t feed(self, bytes data) except -1:
        """Decode from the start of data; returns the bytes used. Sets event, body and pieces."""
        cdef const unsigned char* p = <const unsigned char*>PyBytes_AS_STRING(data)
        cdef Py_ssize_t n = len(data), i = 0, take
        cdef int st = self.state
        cdef int d
        cdef int event = D_MORE
        cdef unsigned char c
        # Chunk-data runs of this read: the first one is kept as (first, first_len); from the second
        # on, all are copied once into `out` (a bytes of at most n, shrunk at the end), so a read
        # of many chunks costs one copy, never one new string per chunk plus a join.
        cdef Py_ssize_t runs = 0, first = 0, first_len = 0, out_len = 0
        cdef PyObject* out = NULL
        reply = None
        self.body = None
        self.pieces = 0
        if st == C_FAILED:
            self.event = D_FAILED
            return n
        while i < n:
            if st == C_DATA:
                take = n - i if self.size > n - i else <Py_ssize_t>self.size
                if runs == 0:
                    first = i
                    first_len = take
                else:
                    if out == NULL:
                        out = _new_bytes(NULL, n)
                        memcpy(_bytes_ptr(out), p + first, first_len)
                        out_len = first_len
                    memcpy(_bytes_ptr(out) + out_len, p + i, take)
                    out_len += take
                runs += 1
                i += take
                self.size -= take
                if self.size == 0:
                    st = C_DATA_CR
                continue
            c = p[i]
            i += 1
            if st == C_SIZE:
                d = _HEX[c]
                if d >= 0:
                    self.size = self.size * 16 + d
                    self.line += 1
                    if self.total + self.size > self.lim_body:
                        reply = replies.BODY_TOO_LARGE
                        break
                elif self.line == 0:
                    reply = replies.BAD_REQUEST
                    break
                elif c == 59:  # ';'
                    st = C_EXT
                    self.line += 1
                elif c == 13:
                    st = C_SIZE_LF
                else:
                    reply = replies.BAD_REQUEST
                    break
            elif st <= C_EXT_QDONE:
                # (as llhttp: a name may be empty, a value is a token or a quoted string; the CR that
                # ends the line is not counted in line)
                if c == 13 and (st == C_EXT_NAME or st == C_EXT_VALUE or st == C_EXT_QDONE):
                    st = C_SIZE_LF
                    continue
                self.line += 1
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
                elif is_tchar(c):
                    if st == C_EXT:
                        st = C_EXT_NAME
                else:
                    reply = replies.BAD_REQUEST
                    break
            elif st == C_SIZE_LF:
                if c != 10:
                    reply = replies.BAD_REQUEST
                    break
                self.total += self.size
                self.line = 0
                st = C_DATA if self.size else C_TRAILER
                if self.defer:
                    # The request goes upstream only now: a body refused on its first line
                    # reaches no upstream at all.
                    self.defer = False
                    event = D_FIRST
                    break
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
                self.size = 0
            else:
                # The trailer section (dropped; bounded like a head) and the empty line ending it.
                self.line += 1
                if self.line > self.lim_trailer:
                    reply = replies.HEADERS_TOO_LARGE
                    break
                if st == C_TRAILER:
                    if c == 13:
                        st = C_END_LF
                    elif is_tchar(c):
                        st = C_FIELD
                    else:
                        reply = replies.BAD_REQUEST
                        break
                elif st == C_FIELD:
                    if c == 58:  # ':'
                        st = C_VALUE
                    elif not is_tchar(c):
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
                    event = D_END
                    break
            if self.line > C_MAX_LINE and st <= C_SIZE_LF:
                reply = replies.CHUNK_LINE_TOO_LONG
                break
        if reply is not None:
            st = C_FAILED
            event = D_FAILED
        self.state = st
        self.reply = reply
        self.event = event
        if runs:
            # A piece per chunk counts as work: a flood of tiny chunks yields like on_body's.
            self.pieces = runs
            if out != NULL:
                _PyBytes_Resize(&out, out_len)
                self.body = <object>out
                Py_DECREF(<object>out)
            else:
                self.body = data if first_len == n else data[first:first + first_len]
        return i
