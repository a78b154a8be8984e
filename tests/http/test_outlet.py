"""gateway/http/outlet.pyx: writes go straight to the socket only when uvloop holds nothing for it.

Played against real uvloop TCP connections: a peer that stops reading (the kernel takes part of a
write, then nothing: the rest and every later write must queue behind it in uvloop's buffer, in
order, and flow control must pause the protocol), a transport closed under the writer (its fd
number taken by another socket: nothing may reach that one), and transports that are not uvloop's
(no direct writes at all)."""
from __future__ import annotations

import asyncio
import os
import socket

import pytest

from gateway.http.outlet import Outlet
from tests.state.helpers import run_on_uvloop


class Proto(asyncio.Protocol):
    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.paused = 0
        self.resumed = 0
        self.lost = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def pause_writing(self) -> None:
        self.paused += 1

    def resume_writing(self) -> None:
        self.resumed += 1

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.lost.done():
            self.lost.set_result(exc)


async def connected() -> tuple[Proto, asyncio.Transport, Outlet, socket.socket]:
    """A uvloop TCP transport accepted by a uvloop server (as the gateway's are), its Outlet and
    the peer's blocking socket."""
    loop = asyncio.get_running_loop()
    protos: list[Proto] = []
    server = await loop.create_server(lambda: protos.append(Proto()) or protos[-1], "127.0.0.1", 0)
    # Fixed socket buffers on both ends (no autotuning): how much the kernel takes before a write
    # is cut short stays the same however much earlier tests or this one have sent.
    peer = socket.socket()
    peer.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 18)
    await loop.run_in_executor(None, peer.connect, server.sockets[0].getsockname()[:2])
    while not protos or protos[0].transport is None:
        await asyncio.sleep(0.001)
    server.close()
    transport = protos[0].transport
    assert transport is not None
    transport.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 18)
    return protos[0], transport, Outlet(transport), peer


def chunk(i: int, size: int = 50_000) -> bytes:
    head = b"<%08d>" % i
    return head + bytes([65 + i % 26]) * (size - len(head))


def read_exactly(sock: socket.socket, n: int, timeout: float = 10.0) -> bytes:
    sock.settimeout(timeout)
    out = bytearray()
    while len(out) < n:
        got = sock.recv(min(1 << 20, n - len(out)))
        assert got, f"peer closed after {len(out)} of {n} bytes"
        out += got
    return bytes(out)


def test_a_peer_that_stops_reading_gets_every_byte_in_order_once_it_reads() -> None:
    async def main() -> None:
        proto, t, out, peer = await connected()
        assert out.fd == t.get_extra_info("socket").fileno()
        sent = []
        # The peer reads nothing: the socket buffers fill, a write is cut short (the rest queued in
        # uvloop), and every later one must queue behind it; flow control pauses the protocol.
        for i in range(2000):   # (~2 MB fill the fixed buffers; 100 MB would be a bug)
            data = chunk(i)
            if i % 3 == 2:   # head and body pieces, one writev (cut short once the socket fills)
                pieces = [data[:100], data[100:40_000], data[40_000:]]
                out.write_pieces(pieces)
            else:
                out(data)
            sent.append(data)
            if proto.paused:
                break
        assert proto.paused == 1, "uvloop's high-water mark paused the writer"
        assert t.get_write_buffer_size() > 0
        for i in range(len(sent), len(sent) + 5):   # writes while paused queue too
            data = chunk(i)
            if i % 2:
                out(data)
            else:
                out.write_pieces([data[:10], data[10:]])
            sent.append(data)
        # Now the peer reads everything, in a thread, while the loop drains uvloop's buffer.
        expected = b"".join(sent)
        got = await asyncio.get_running_loop().run_in_executor(None, read_exactly, peer, len(expected))
        assert got == expected
        assert proto.resumed == 1
        # Drained: the next write goes straight to the socket again, and arrives.
        assert t.get_write_buffer_size() == 0
        out(b"after")
        assert await asyncio.get_running_loop().run_in_executor(None, read_exactly, peer, 5) == b"after"
        # Again with every write a writev of three pieces: the one the kernel cuts short is one.
        sent = []
        for i in range(3000):
            data = chunk(1000 + i, 30_001)
            assert out.write_pieces([data[:7], data[7:20_000], data[20_000:]]) == len(data)
            sent.append(data)
            if proto.paused == 2:
                break
        assert proto.paused == 2 and t.get_write_buffer_size() > 0
        expected = b"".join(sent)
        got = await asyncio.get_running_loop().run_in_executor(None, read_exactly, peer, len(expected))
        assert got == expected
        t.close()
        await proto.lost
        peer.close()

    run_on_uvloop(main)


def test_a_closed_transport_is_never_written_around_even_when_its_fd_number_is_reused() -> None:
    async def main() -> None:
        proto, t, out, peer = await connected()
        fd = out.fd
        t.abort()
        out(b"must not go out")   # closing: handed to uvloop, which drops it (the peer sees none)
        await proto.lost
        # uvloop closes the socket once connection_lost has run, and the fd number is free for the
        # next socket the process opens (a connection accepted in the same loop turn): put a fresh
        # socket pair's end on exactly that number, then write as late code could.
        try:
            os.fstat(fd)
            raise AssertionError("the transport's fd is still open after connection_lost")
        except OSError:
            pass
        a, b = socket.socketpair()   # `a` is put on the number, `b` is where a leak would show
        if b.fileno() == fd:
            a, b = b, a
        dup = a.fileno() != fd   # (the lowest free number: often the pair takes it by itself)
        if dup:
            os.dup2(a.fileno(), fd)
        try:
            with pytest.raises(RuntimeError, match="closed"):
                out(b"must not leak")   # uvloop's write refuses a closed handle, as it always did
            b.setblocking(False)
            try:
                leaked = b.recv(100)
            except BlockingIOError:
                leaked = b""
            assert leaked == b"", "a closed transport's write reached the socket now on its fd"
            peer.settimeout(5)
            assert peer.recv(100) == b"", "the aborted connection's peer got nothing, then EOF"
        finally:
            if dup:
                os.close(fd)
            a.close()
            b.close()
            peer.close()

    run_on_uvloop(main)


def test_transports_that_are_not_uvloop_tcp_are_written_through_their_write() -> None:
    class Fake:
        def __init__(self) -> None:
            self.got: list[bytes] = []

        def write(self, data: bytes) -> None:
            self.got.append(data)

    fake = Fake()
    out = Outlet(fake)
    assert out.fd == -1
    out(b"x")
    fake.write = lambda data: fake.got.append(b"swapped:" + data)  # type: ignore[method-assign]
    out(b"y")   # looked up per call: a test's fake may swap its write
    assert fake.got == [b"x", b"swapped:y"]

    async def on_asyncio() -> None:
        loop = asyncio.get_running_loop()
        srv = await loop.create_server(asyncio.Protocol, "127.0.0.1", 0)
        t, _ = await loop.create_connection(asyncio.Protocol, *srv.sockets[0].getsockname()[:2])
        assert Outlet(t).fd == -1   # asyncio's own transport: always its write
        t.close()
        srv.close()
        await srv.wait_closed()

    asyncio.run(on_asyncio())
