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

    def write_pieces(self, list pieces) -> int:
        """write_list for Python callers and tests."""
        return self.write_list(pieces)

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

    cdef Py_ssize_t write_list(self, list pieces) except -1:
        """pieces (bytes-like), in order; returns how many bytes they are. One writev(2) when
        direct (no copy into a joined string); else joined when small (one write) or handed to
        uvloop as a vector (writelines). The one place of that policy for both directions."""
        cdef iovec iov[IOV_MAX_PIECES]
        cdef Py_ssize_t i, n, written = 0, size = 0, count = len(pieces)
        cdef bint direct = self.fd >= 0 and count <= IOV_MAX_PIECES
        cdef object piece
        if count == 0:
            return 0
        if count == 1:
            piece = pieces[0]
            self.write(piece)
            return len(piece)
        for i in range(count):
            piece = pieces[i]
            if direct and PyBytes_CheckExact(piece):
                iov[i].iov_base = PyBytes_AS_STRING(piece)
                iov[i].iov_len = <size_t>PyBytes_GET_SIZE(piece)
                size += PyBytes_GET_SIZE(piece)
            else:
                direct = False
                size += len(piece)
        rest = pieces
        if direct and size and not self.is_closing() and not self.buffered():
            n = writev(self.fd, iov, <int>count)
            if n == size:
                return size
            if n > 0:
                # What the kernel did not take, from where it stopped, goes to uvloop.
                written = n
                i = 0
                while i < count - 1 and n >= PyBytes_GET_SIZE(pieces[i]):
                    n -= PyBytes_GET_SIZE(pieces[i])
                    i += 1
                rest = [pieces[i][n:], *pieces[i + 1:]]
        if len(rest) == 1:
            self.transport.write(rest[0])
        elif size - written <= cJOIN_MAX:
            self.transport.write(b"".join(rest))
        else:
            self.transport.writelines(rest)
        return size
