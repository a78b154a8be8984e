"""A common upstream response recognised in one pass, without llhttp.

Most responses an API gateway relays are small and plain: `HTTP/1.1 200 OK`, a dozen fields of
visible ASCII, one Content-Length, and the whole response in one read. llhttp's verdict on such a
head, plus the scan of its fields that head.pyx makes once llhttp has accepted it, cost about a
sixth of a plain request's instructions (bench/results/headers.md). `scan_plain_response` gives
both at once for a strict subset of what llhttp accepts, and says "not plain" (None) for anything
else, which then takes the llhttp path exactly as before. It never decides anything llhttp would
decide differently: tests/http/test_plain_response.py checks every head it accepts against
llhttp's own reading (status, version, fields, Content-Length, keep-alive), over a table of
framing and smuggling heads, every one-byte mutation of it, and generated heads.

The subset (RFC 9112 §4 and §5, without any of its leniencies):
- the status line is `HTTP/1.0` or `HTTP/1.1`, SP, three digits, then CRLF or SP and a reason
  phrase of HTAB, SP and visible ASCII, then CRLF;
- each field line is a token, `:`, optional SP/HTAB, a value of HTAB, SP and visible ASCII
  (no obs-text, no control byte), CRLF; no obs-fold; the head ends at the first empty line;
- at most one Content-Length, whose value is 1 to 15 digits and nothing else;
- no Transfer-Encoding, at most one Connection field, whose value is exactly `close` or
  `keep-alive` (any case), and no Proxy-Connection (llhttp reads it as Connection).
What the caller does with the status (1xx, 204, 304, HEAD) and the length is its own rule
(upstream.pyx). The view's values are llhttp's: leading SP/HTAB dropped, trailing kept.
"""
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_GET_SIZE
from libc.stdint cimport uint64_t
from libc.string cimport memchr, memcmp, memcpy

from gateway.http.charclass cimport is_tchar
from gateway.http.head cimport HeaderView, add_field, classify_response, same_name

from .wire import R_CONNECTION, R_CONTENT_LENGTH, R_DROP, R_FORWARD, R_TRANSFER_ENCODING

cdef int cR_FORWARD = R_FORWARD
cdef int cR_DROP = R_DROP
cdef int cR_CONTENT_LENGTH = R_CONTENT_LENGTH
cdef int cR_TRANSFER_ENCODING = R_TRANSFER_ENCODING
cdef int cR_CONNECTION = R_CONNECTION

cdef enum:
    CONN_NONE = 0
    CONN_CLOSE = 1
    CONN_KEEP_ALIVE = 2

# What a value or a reason phrase may hold here: HTAB, SP, VCHAR (0x21-0x7e); no obs-text.
cdef unsigned char _TEXT[256]
for _c in range(256):
    _TEXT[_c] = _c == 9 or 32 <= _c <= 126


cdef inline Py_ssize_t _text_to_cr(const unsigned char* p, Py_ssize_t pos, Py_ssize_t size) noexcept:
    """The offset of the first CR at or after pos if every byte before it is text (HTAB, SP,
    VCHAR), else -1 (also when buf holds no CR there). memchr finds the CR; the bytes before it
    are checked eight at a time (SWAR), each byte looked up only in a word that has a suspect
    one (a HTAB, or a bad byte)."""
    cdef const unsigned char* cr = <const unsigned char*>memchr(p + pos, 13, size - pos)
    cdef Py_ssize_t end, k
    cdef uint64_t w, x
    if cr == NULL:
        return -1
    end = cr - p
    while pos + 8 <= end:
        memcpy(&w, p + pos, 8)
        x = w ^ <uint64_t>0x7f7f7f7f7f7f7f7f
        # a byte >= 0x80, a byte < 0x20 (HTAB included), a byte == 0x7f (exact for "any")
        if ((w & <uint64_t>0x8080808080808080)
                | ((w - <uint64_t>0x2020202020202020) & ~w & <uint64_t>0x8080808080808080)
                | ((x - <uint64_t>0x0101010101010101) & ~x & <uint64_t>0x8080808080808080)):
            for k in range(pos, pos + 8):
                if not _TEXT[p[k]]:
                    return -1
        pos += 8
    while pos < end:
        if not _TEXT[p[pos]]:
            return -1
        pos += 1
    return end


cdef HeaderView scan_plain_response(bytes buf, PlainResponse* out, Py_ssize_t max_fields,
                                    Py_ssize_t max_field_bytes):
    """The view of the plain response head at the start of buf (module docstring) and its facts in
    `out`, or None when the head is not plain or not complete in buf. Offsets are buf's; `end` is
    set after the blank line (body bytes may follow in buf). A head with more than `max_fields`
    fields, or more than `max_field_bytes` of them (name + value + 4 each), is None as soon as it
    is over (the caller's head limits: such a head is left to the path that refuses it, and a
    read full of tiny fields never grows a view of thousands)."""
    cdef const unsigned char* p = <const unsigned char*>PyBytes_AS_STRING(buf)
    cdef Py_ssize_t size = PyBytes_GET_SIZE(buf), pos, name, colon, v, k
    cdef long long cl = -1
    cdef int conn = CONN_NONE, cls
    cdef HeaderView view
    # "HTTP/1.x NNN" and at least CRLF CRLF after it
    if size < 16 or memcmp(p, b"HTTP/1.", 7) != 0 or (p[7] != 48 and p[7] != 49) or p[8] != 32:
        return None
    if not (48 <= p[9] <= 57 and 48 <= p[10] <= 57 and 48 <= p[11] <= 57):
        return None
    pos = 12
    if p[pos] == 32:
        pos = _text_to_cr(p, pos + 1, size)
        if pos < 0:
            return None
    if pos + 1 >= size or p[pos] != 13 or p[pos + 1] != 10:
        return None
    view = HeaderView.__new__(HeaderView)
    view.buf = buf
    view.forward_cls = cR_FORWARD
    view.lower = False
    view.line_end = pos
    pos += 2
    while True:
        if pos + 1 >= size:
            return None     # the head goes on past buf
        if p[pos] == 13:
            if p[pos + 1] != 10:
                return None
            view.end = pos + 2
            break
        # (no bound check in these two loops: a bytes object ends with a NUL after its last
        # byte, which is neither a token character nor SP/HTAB, so they stop there at the latest)
        name = pos
        while is_tchar(p[pos]):
            pos += 1
        if pos == name or p[pos] != 58:   # ':' (never the NUL at size)
            return None
        colon = pos
        pos += 1
        while p[pos] == 32 or p[pos] == 9:
            pos += 1
        v = pos
        pos = _text_to_cr(p, pos, size)
        if pos < 0 or pos + 1 >= size or p[pos + 1] != 10:
            return None
        cls = classify_response(p + name, colon - name)
        if cls == cR_CONTENT_LENGTH:
            if cl >= 0 or pos == v or pos - v > 15:
                return None
            cl = 0
            for k in range(v, pos):
                if not 48 <= p[k] <= 57:
                    return None
                cl = cl * 10 + (p[k] - 48)
        elif cls == cR_TRANSFER_ENCODING:
            return None
        elif cls == cR_CONNECTION:
            if conn != CONN_NONE:
                return None
            if same_name(p + v, pos - v, b"close", 5):
                conn = CONN_CLOSE
            elif same_name(p + v, pos - v, b"keep-alive", 10):
                conn = CONN_KEEP_ALIVE
            else:
                return None
        elif cls == cR_DROP and same_name(p + name, colon - name, b"proxy-connection", 16):
            return None
        add_field(view, name, colon - name, v, pos - v, cls)
        if view.n > max_fields or view.field_bytes > max_field_bytes:
            return None
        pos += 2
    out.status = (p[9] - 48) * 100 + (p[10] - 48) * 10 + (p[11] - 48)
    out.minor = p[7] - 48
    out.content_length = cl
    # llhttp_should_keep_alive for a message that needs no EOF: HTTP/1.1 unless `close`, HTTP/1.0
    # only with `keep-alive`.
    out.keep_alive = conn == CONN_KEEP_ALIVE if out.minor == 0 else conn != CONN_CLOSE
    return view


def plain_response(data: bytes, Py_ssize_t max_fields=1000, Py_ssize_t max_field_bytes=1 << 20) -> tuple | None:
    """scan_plain_response for tests: None, or (status, minor, content_length, keep_alive,
    [(name, value)...], end)."""
    cdef PlainResponse r
    cdef HeaderView view = scan_plain_response(bytes(data), &r, max_fields, max_field_bytes)
    cdef Py_ssize_t i
    if view is None:
        return None
    fields = []
    for i in range(view.n):
        fields.append((view.buf[view.f[i].name:view.f[i].name + view.f[i].nlen],
                       view.c_value(i)))
    return r.status, r.minor, r.content_length, bool(r.keep_alive), fields, view.end
