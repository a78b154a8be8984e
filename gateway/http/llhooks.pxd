# llhttp's callbacks and its execute, called from C (llhooks.pyx): the request and response
# parsers still come from httptools (llhttp_t allocated and initialised there), but llhttp calls
# the protocols' cdef methods through the C functions in `Hooks`, with `data` pointing at the
# protocol, and `feed` runs llhttp_execute without a Python call.
from gateway.http.parser_stop cimport llhttp_prefix

ctypedef int (*ll_cb)(llhttp_prefix*) noexcept
ctypedef int (*ll_data_cb)(llhttp_prefix*, const char*, size_t) noexcept


cdef struct Hooks:
    # NULL: not called. `data` of the llhttp_prefix is the owner given to hooked_parser.
    # A callback returns 0, or failed(p, exc) when its method raised.
    ll_cb on_message_begin
    ll_data_cb on_url
    ll_cb on_headers_complete       # returns headers_done(p) when all went well
    ll_data_cb on_body
    ll_cb on_message_complete
    ll_cb on_chunk_header
    ll_cb on_chunk_complete


cdef object hooked_parser(bint response, object owner, const Hooks* hooks)
cdef int feed(object parser, bytes data) except -1
cdef int failed(llhttp_prefix* p, BaseException exc) noexcept


cdef inline int headers_done(llhttp_prefix* p) noexcept:
    """on_headers_complete's answer when the owner accepted the head: 1 (no body: llhttp then
    pauses with HPE_PAUSED_UPGRADE) for an upgrade, as httptools answers."""
    return 1 if p.upgrade else 0
