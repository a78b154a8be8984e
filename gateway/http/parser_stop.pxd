# Where httptools' llhttp stopped after a callback raised: the one fact about the request parser
# that httptools does not expose (it gives the offset only for an upgrade). downstream.pyx needs it
# to decode a chunked request body itself from the byte after the head. It is read from llhttp's own
# state through two layouts, which downstream.pyx checks at import (a wrong guess fails loudly there,
# never silently on a request):
#  - httptools.parser.HttpParser is a Cython cdef class with cdef methods: PyObject_HEAD, its vtable
#    pointer, then its first field, `llhttp_t* _cparser`;
#  - llhttp_t (llparse's llhttp__internal_t) begins with these fields in every llhttp release since
#    2.0; llhttp sets `error_pos` to the byte where it stopped. httptools sets `data` to the parser
#    object, and llhooks.pyx, which takes its callbacks over, to the protocol that owns the parser:
#    llhooks.pyx checks at import that `data` and `settings` are where this struct says (the
#    parser, and httptools' settings block), so a parser whose `data` is NULL is not one of these.
#
# The same layout gives `skip_body`: the bytes of a Content-Length body counted as read without
# feeding them to llhttp, so that they go on as the read's own `bytes` instead of a copy per
# on_body call (reader.pyx checks it at import too; `_current` and `content_length` follow `data`
# in llhttp_t since 2.0).
from cpython.bytes cimport PyBytes_AS_STRING
from cpython.object cimport PyObject
from libc.stdint cimport int32_t, uint8_t, uint16_t, uint64_t


cdef struct llhttp_prefix:
    int32_t _index
    void* _span_pos0
    void* _span_cb0
    int32_t error
    const char* reason
    const char* error_pos
    void* data
    void* _current
    uint64_t content_length
    # (the rest of llhttp 9.x's prefix: read by llstate.pyx, which checks it at import)
    uint8_t type
    uint8_t method
    uint8_t http_major
    uint8_t http_minor
    uint8_t header_state
    uint16_t lenient_flags
    uint8_t upgrade
    uint8_t finish
    uint16_t flags
    uint16_t status_code
    # (llhooks.pyx: llhttp's settings pointer, checked at import against httptools' own)
    uint8_t initial_message_completed
    void* settings


cdef inline llhttp_prefix* _llhttp(object parser) noexcept:
    return (<llhttp_prefix**>(<char*><PyObject*>parser + sizeof(PyObject) + sizeof(void*)))[0]


cdef inline llhttp_prefix* _known(object parser) noexcept:
    """llhttp's state of an httptools parser, or NULL if it does not look like one (no `data`)."""
    cdef llhttp_prefix* st = _llhttp(parser)
    if st == NULL or st.data == NULL:
        return NULL
    return st


cdef inline Py_ssize_t stop_offset(object parser, bytes data) noexcept:
    """Offset in data where parser stopped in feed_data(data) after a callback raised; -1 if unknown."""
    cdef llhttp_prefix* st = _known(parser)
    cdef Py_ssize_t off
    if st == NULL or st.error_pos == NULL:
        return -1
    off = st.error_pos - PyBytes_AS_STRING(data)
    return off if 0 <= off <= len(data) else -1


cdef inline bint skip_body(object parser, Py_ssize_t n, long long left) noexcept:
    """Count the next n bytes of a Content-Length body as read by llhttp without feeding them, when
    more than n bytes of it are left: llhttp would only consume them (its on_body span is all it
    would report) and stays where it was, inside the body, so the next feed goes on exactly as if
    these bytes had been fed. The caller knows the parser is past the head of a message with a
    Content-Length body; `left` (the body bytes it still expects, or -1) must agree with llhttp's
    count. The last bytes of a body are always fed (llhttp then completes the message)."""
    cdef llhttp_prefix* st = _known(parser)
    if st == NULL or st.error != 0:
        return False
    if st.content_length <= <uint64_t>n or (left >= 0 and st.content_length != <uint64_t>left):
        return False
    st.content_length -= <uint64_t>n
    return True
