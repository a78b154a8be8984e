"""A connection's writes: straight to its socket when uvloop holds nothing for it.

uvloop's transport.write costs about 1,000 user-space instructions for a write the kernel takes
whole (bench/live_instructions.py: a Python-level call, the bytes appended to a list and taken off
it with a Python-level list.clear(), a fileno() lookup, flow-control bookkeeping; the write(2)
itself is ~14), and a bare proxied request makes two. When the transport is a plain uvloop TCP
transport (not TLS, not asyncio's, not a test's fake) that is not closing and holds no unsent
bytes (its buffer and libuv's write queue both empty), write(2) on its socket is exactly what
uvloop's own fast path does first. What the kernel does not take (EAGAIN, a partial write) or
refuses (an error) goes to transport.write, which buffers it or reports the error as before.
So:
- order is kept: bytes go to the socket directly only when nothing is queued ahead of them;
- flow control is uvloop's: a full socket buffer sends the rest through transport.write, whose
  high-water mark pauses the protocol as before (the hostile-peer tests' slow readers);
- a closing transport is never written around, so is_closing() is asked on every write: bytes
  written after close() or abort() must not go out, and once connection_lost has run uvloop
  closes the socket and the fd number is free for the next connection the worker accepts, while
  late code may still hold this Outlet (uvloop keeps is_closing() true from then on).
"""
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_CheckExact, PyBytes_GET_SIZE
from posix.uio cimport iovec, writev
from posix.unistd cimport write as c_write

from .wire import JOIN_MAX

cdef enum:
    # Pieces written with one writev: a response head and its body, chunks and their framing.
    IOV_MAX_PIECES = 16
cdef Py_ssize_t cJOIN_MAX = JOIN_MAX   # (wire.py: join small pieces, hand large ones over as a vector)

try:
    from uvloop.loop import TCPTransport as _UV_TCP
except ImportError:  # uvloop is a dependency; without it every write is transport.write
    _UV_TCP = None


cdef class Outlet:
    def __init__(self, transport):
        self.transport = transport
        self.fd = -1
        if _UV_TCP is not None and type(transport) is _UV_TCP:
            sock = transport.get_extra_info("socket")
            if sock is not None:
                # (Bound once: a uvloop transport's methods cannot be replaced. Any other
                # transport's write is looked up per call, as a test's fake may swap it.)
                self.t_write = transport.write
                self.is_closing = transport.is_closing
                self.buffered = transport.get_write_buffer_size
                self.fd = sock.fileno()

    def __call__(self, data) -> None:
        """transport.write's signature, for Python callers and tests."""
        self.write(data)

    def write_pieces(self, list pieces) -> None:
        """write_list for Python callers and tests."""
        self.write_list(pieces, sum([len(p) for p in pieces]))

    cdef int write(self, object data) except -1:
        cdef Py_ssize_t size, n
        if self.fd >= 0 and PyBytes_CheckExact(data):
            size = PyBytes_GET_SIZE(data)
            if size and not self.is_closing() and not self.buffered():
                # (The GIL is held, as uvloop holds it for its own write(2): non-blocking.)
                n = c_write(self.fd, PyBytes_AS_STRING(data), <size_t>size)
                if n == size:
                    return 0
                if n > 0:
                    data = data[n:]
                # n < 0 (EAGAIN, EINTR, EPIPE, ECONNRESET...): uvloop writes it again and so
                # buffers it or meets the error itself, closing the transport as it always did.
            self.t_write(data)
        else:
            self.transport.write(data)
        return 0

    cdef int write_list(self, list pieces, Py_ssize_t size) except -1:
        """pieces (bytes, `size` bytes in all), in order: one writev(2) when direct (no copy into
        a joined string), else joined when small (one write) or handed to uvloop as a vector."""
        cdef iovec iov[IOV_MAX_PIECES]
        cdef Py_ssize_t i, n, count = len(pieces)
        cdef object piece
        if (self.fd >= 0 and 1 < count <= IOV_MAX_PIECES and not self.is_closing()
                and not self.buffered()):
            for i in range(count):
                piece = pieces[i]
                if not PyBytes_CheckExact(piece):
                    break
                iov[i].iov_base = PyBytes_AS_STRING(piece)
                iov[i].iov_len = <size_t>PyBytes_GET_SIZE(piece)
            else:
                n = writev(self.fd, iov, <int>count)
                if n == size:
                    return 0
                if n > 0:
                    # What the kernel did not take, from where it stopped, goes to uvloop.
                    i = 0
                    while i < count - 1 and n >= PyBytes_GET_SIZE(pieces[i]):
                        n -= PyBytes_GET_SIZE(pieces[i])
                        i += 1
                    pieces = [pieces[i][n:], *pieces[i + 1:]]
                    size = 0
                    for piece in pieces:
                        size += PyBytes_GET_SIZE(piece)
        if len(pieces) == 1:
            self.transport.write(pieces[0])
        elif size <= cJOIN_MAX:
            self.transport.write(b"".join(pieces))
        else:
            self.transport.writelines(pieces)
        return 0
