# The chunked request-body decoder as a cdef class: the downstream protocol holds one per
# connection and calls feed() as a C method for every read inside a chunked body.

cdef enum:
    # what the last feed() call stopped at (ChunkDecoder.event)
    D_MORE = 0        # every byte was used: the body goes on in the next read
    D_FIRST = 1       # the first chunk-size line is valid (start() asked for it): dispatch the request
    D_END = 2         # the body (and its trailer section) ended at the returned offset
    D_FAILED = 3      # refused: `reply` says how; nothing more is read


cdef class ChunkDecoder:
    cdef int state
    cdef long long size         # the chunk being read: its size as the digits come, then bytes left
    cdef long long total        # chunk sizes declared so far (never above lim_body)
    cdef Py_ssize_t line        # bytes of the current chunk-size line, or of the trailer section
    cdef bint defer             # stop at the end of the first chunk-size line (D_FIRST)
    cdef long long lim_body
    cdef Py_ssize_t lim_trailer
    cdef public int event
    cdef public object reply    # the LocalReply of a refusal (D_FAILED)
    cdef public object body     # the body bytes the last feed() decoded (one piece), or None
    cdef public Py_ssize_t pieces  # chunk-data runs in `body` (work done, see downstream _consume)

    cdef bint active(self) noexcept
    cdef long long data_left(self) noexcept
    cdef int start(self, bint defer) except -1
    cdef Py_ssize_t feed(self, bytes data) except -1
