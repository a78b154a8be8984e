# llhttp driven from C (llhooks.pyx): the request and response parsers still come from httptools
# (llhttp_t allocated and initialised there), but llhttp calls the owner's cdef methods through
# C functions, with `data` pointing at the owner, and `feed` runs llhttp_execute without a Python
# call.
from libc.stdint cimport uint64_t

# Which of llhttp's callbacks an owner takes (the others are not called): hooked_parser's `wanted`.
cdef enum:
    W_MESSAGE_BEGIN = 1
    W_URL = 2
    W_BODY = 4
    W_MESSAGE_COMPLETE = 8
    W_CHUNKS = 16          # on_chunk_header and on_chunk_complete
    # (on_headers_complete is always called)


cdef class ParserOwner:
    """What llhttp calls, as cdef methods (vtable calls from llhooks.pyx's C callbacks): the base
    of the client and upstream protocols. An exception raised here stops llhttp where it is, and
    `feed` raises HttpParserCallbackError from it, as httptools' feed_data does."""
    cdef int _message_begin(self) except -1
    cdef int _url(self, bytes url) except -1
    cdef int _headers_complete(self) except -1
    cdef int _on_body(self, bytes body) except -1
    cdef int _message_complete(self) except -1
    cdef int _chunk_header(self, uint64_t size) except -1   # the chunk's size (0: the last)
    cdef int _chunk_complete(self) except -1


cdef object hooked_parser(bint response, ParserOwner owner, int wanted)
cdef int feed(object parser, bytes data) except -1
