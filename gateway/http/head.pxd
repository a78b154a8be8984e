# A request or response head kept as one bytes object plus the span of each field in it: the
# fields cost no Python object until a filter (or the data plane) asks for one (head.pyx).
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_GET_SIZE
from libc.stdint cimport int32_t
from libc.string cimport memchr, memcpy


cdef struct Field:
    int32_t name      # offset of the name in HeaderView.buf
    int32_t nlen
    int32_t value     # offset of the value (llhttp's: leading SP/HTAB skipped, the rest kept)
    int32_t vlen
    int32_t cls       # the wire.py class (H_* for a request, R_* for a response); F_GONE once removed


# A field no longer forwarded (a filter removed it, or Connection named it).
cdef enum:
    F_GONE = -1

cdef class HeaderView:
    cdef readonly bytes buf       # the head's bytes, from the request line to the blank line
    cdef Field* f
    cdef Py_ssize_t n
    cdef Py_ssize_t cap
    # Fields held inside the view itself (24: a browser's request has ~16); a head with more moves
    # them to the heap, bounded by GATEWAY_MAX_HEADERS (the head is refused past it).
    cdef Field small[24]
    cdef int32_t forward_cls      # the class of the fields that are forwarded (H_FORWARD / R_FORWARD)
    cdef bint lower               # names written lowercased (a request's, as always) or as received
    cdef public list added        # (lowercased name, value) added by filters; None while none
    cdef Py_ssize_t line_end      # end of the first line (request or status line), CRLF excluded
    cdef bint connection          # a request head with a Connection or Proxy-Connection field
    cdef readonly Py_ssize_t field_bytes   # sum of name + value + 4 over the fields (the head limit's measure)
    cdef Py_ssize_t end           # offset after the head's blank line in buf (set by the scan)

    cdef int _push(self, Py_ssize_t name, Py_ssize_t nlen, Py_ssize_t value, Py_ssize_t vlen,
                   int cls) except -1
    cdef int _rebase(self, bytes buf, Py_ssize_t start) except -1
    cdef bytes c_value(self, Py_ssize_t i)
    cdef bytes c_lname(self, Py_ssize_t i)
    cdef bint c_is(self, Py_ssize_t i, const char* lname, Py_ssize_t n) noexcept
    cdef Py_ssize_t c_find(self, const char* lname, Py_ssize_t n, Py_ssize_t start, bint all) noexcept
    cdef Py_ssize_t c_count(self, const char* lname, Py_ssize_t n) noexcept
    cdef object c_get(self, const char* lname, Py_ssize_t n)
    cdef Py_ssize_t c_count_all(self, const char* lname, Py_ssize_t n) except -1
    cdef Py_ssize_t wire_size(self) except -1
    cdef char* wire_put(self, char* p) noexcept


cdef bytes response_head_view(bytes status_line, HeaderView view, list extra, bytes framing,
                              bytes request_id, bytes tail)
cdef list forwarded_pairs(HeaderView view)
cdef int classify_request(const unsigned char* p, Py_ssize_t n) noexcept
cdef int classify_response(const unsigned char* p, Py_ssize_t n) noexcept
cdef bint same_name(const unsigned char* p, Py_ssize_t n, const char* lname, Py_ssize_t m) noexcept


cdef class HeadTracker:
    # Where the heads lie in what one connection feeds to llhttp (head.pyx).
    cdef object parser            # the parser of the last feed: a new one starts a new stream
    cdef bytes data               # the bytes being fed now
    cdef Py_ssize_t next          # offset in `data` where the next head may begin (past: body bytes)
    cdef bytearray hold           # the start of a head begun in earlier feeds (None when none)
    cdef Py_ssize_t hold_max      # bound on `hold` (raw bytes: whitespace included)
    cdef Py_ssize_t lim_fields    # GATEWAY_MAX_HEADERS
    cdef Py_ssize_t lim_bytes     # GATEWAY_MAX_HEADER_BYTES (name + value + 4 per field)
    cdef Py_ssize_t scan          # in `hold`: where the next unmeasured field line starts (0: request line)
    cdef public Py_ssize_t fields     # complete field lines of the held head
    cdef public Py_ssize_t field_bytes  # their name + value + 4
    cdef Py_ssize_t end           # offset in `data` after the last head taken

    cdef int feeding(self, object parser, bytes data) except -1
    cdef int fed(self, bint in_head) except -1
    cdef int _measure(self) except -1
    cdef bytes _join_held(self, bytes method)
    cdef HeaderView take_view(self, bytes method, int32_t forward_cls, bint request)
    cdef int body(self, long long length) except -1
    cdef int skipped(self, Py_ssize_t n) except -1
    cdef int reset(self) except -1
    cdef int failed_at(self, Py_ssize_t pos) except -1


# Writing a head into one preallocated bytes object (head.pyx, request.pyx): a bytes object's
# bytes at p; (name, value) pairs as `name: value\r\n` lines (None: none), and their size.
cdef inline int add_field(HeaderView view, Py_ssize_t name, Py_ssize_t nlen, Py_ssize_t value,
                          Py_ssize_t vlen, int cls) except -1:
    """One field line of a scan appended to the view (inline in the scan while the view's own 24
    slots last), and counted as the head limits measure it (name + value + 4)."""
    cdef Field* f
    if view.n < view.cap:
        f = &view.f[view.n]
        f.name = <int32_t>name
        f.nlen = <int32_t>nlen
        f.value = <int32_t>value
        f.vlen = <int32_t>vlen
        f.cls = cls
        view.n += 1
    else:
        view._push(name, nlen, value, vlen, cls)
    view.field_bytes += nlen + vlen + 4
    return 0


cdef inline Py_ssize_t find_crlfcrlf(const char* p, Py_ssize_t i, Py_ssize_t end) noexcept:
    """Offset of the first CR LF CR LF lying wholly in p[i:end], -1 if none (bytes.find's answer):
    memchr from CR to CR, a few calls per field line, where bytes.find compared byte by byte."""
    cdef const char* c
    while i + 3 < end:
        c = <const char*>memchr(p + i, 13, end - 3 - i)
        if c == NULL:
            return -1
        i = c - p
        if p[i + 1] == 10 and p[i + 2] == 13 and p[i + 3] == 10:
            return i
        i += 1
    return -1


cdef inline char* put_bytes(char* p, bytes b) noexcept:
    cdef Py_ssize_t n = PyBytes_GET_SIZE(b)
    memcpy(p, PyBytes_AS_STRING(b), n)
    return p + n

cdef Py_ssize_t pairs_size(list fields) except -1
cdef char* put_pairs(char* p, list fields) noexcept
