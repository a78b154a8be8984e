"""Large bodies both ways, byte-exact: an upstream and a client that move pseudo-random bytes at
full speed (or slowly, to back the gateway up) and check them by sha256.

Bodies are a deterministic stream (`stream(seed, n)`): a random block whose length is not a power
of two, repeated, so a piece lost, doubled or moved anywhere changes the hash.

BulkUpstream, a threaded raw-socket server (sendall releases the GIL: it sends at the kernel's
pace, never the test's), keep-alive:
  GET /sized?n=N&seed=S         a Content-Length response of stream(S, N)
  GET /chunked?n=N&seed=S       the same bytes, chunked, chunk sizes cycling from 1 byte to 300 KB,
                                with a chunk extension now and then and a trailer
  POST /sink[?slow=MS]          reads the body (Content-Length or chunked) and answers
                                {"len": ..., "sha256": ...}; with slow, it waits MS ms before
                                reading and then reads 4 KiB at a time for MS ms more (the
                                gateway's upstream write buffer fills: the client is paused)
The client side: `download` and `upload` over a raw socket, optionally reading slowly.
"""
from __future__ import annotations

import hashlib
import json
import random
import socket
import threading
import time
from urllib.parse import parse_qs, urlsplit

BLOCK = random.Random(17).randbytes((1 << 20) + 7)
CHUNK_SIZES = (1, 100, 4096, 65536, 300_000, 17, 1 << 20, 5000)


def stream(seed: int, n: int, piece: int = 1 << 20):
    """The body bytes for (seed, n) as memoryviews of at most `piece` bytes."""
    view = memoryview(BLOCK)
    pos = seed % len(BLOCK)
    left = n
    while left > 0:
        take = min(piece, left, len(BLOCK) - pos)
        yield view[pos:pos + take]
        pos = (pos + take) % len(BLOCK)
        left -= take


def digest(seed: int, n: int) -> str:
    h = hashlib.sha256()
    for p in stream(seed, n):
        h.update(p)
    return h.hexdigest()


def chunked(seed: int, n: int):
    """stream(seed, n) framed as chunks of cycling sizes (extensions on some), then a trailer."""
    it = stream(seed, n, piece=1 << 30)
    buf = memoryview(b"")
    i = 0
    left = n
    while left > 0:
        size = min(CHUNK_SIZES[i % len(CHUNK_SIZES)], left)
        i += 1
        while len(buf) < size:
            buf = memoryview(bytes(buf) + bytes(next(it)))
        ext = b";x=1" if i % 3 == 0 else b""
        yield b"%x%s\r\n" % (size, ext)
        yield buf[:size]
        yield b"\r\n"
        buf = buf[size:]
        left -= size
    yield b"0\r\nX-Trailer: t\r\n\r\n"


class Reader:
    """Buffered reads from a socket (readline / exact n / a chunked body), optionally paced."""

    def __init__(self, sock: socket.socket, rate: float = 0.0, piece: int = 65536) -> None:
        self.sock = sock
        self.buf = bytearray()
        self.rate = rate        # bytes per second, 0: as fast as possible
        self.piece = piece
        self.t0 = time.monotonic()
        self.got = 0

    def _fill(self) -> None:
        if self.rate:
            due = self.t0 + self.got / self.rate
            now = time.monotonic()
            if due > now:
                time.sleep(due - now)
        data = self.sock.recv(self.piece)
        if not data:
            raise ConnectionError("peer closed")
        self.got += len(data)
        self.buf += data

    def line(self) -> bytes:
        while True:
            i = self.buf.find(b"\r\n")
            if i >= 0:
                out = bytes(self.buf[:i])
                del self.buf[:i + 2]
                return out
            if len(self.buf) > 65536:
                raise ValueError("line too long")
            self._fill()

    def head(self) -> tuple[bytes, dict[bytes, bytes]]:
        first = self.line()
        fields: dict[bytes, bytes] = {}
        while True:
            ln = self.line()
            if not ln:
                return first, fields
            name, _, value = ln.partition(b":")
            fields[name.strip().lower()] = value.strip()

    def exact(self, n: int, sink) -> None:
        while n > 0:
            if not self.buf:
                self._fill()
            take = min(n, len(self.buf))
            sink(self.buf[:take])
            del self.buf[:take]
            n -= take

    def body(self, fields: dict[bytes, bytes], sink) -> int:
        """Read a body framed by `fields` into sink; returns its length."""
        if fields.get(b"transfer-encoding", b"").lower() == b"chunked":
            total = 0
            while True:
                size = int(self.line().split(b";")[0], 16)
                if size == 0:
                    while self.line():
                        pass
                    return total
                self.exact(size, sink)
                total += size
                if self.line() != b"":
                    raise ValueError("bad chunk end")
        if b"content-length" not in fields:   # delimited by the close (to an HTTP/1.0 client)
            total = len(self.buf)
            sink(self.buf)
            self.buf = bytearray()
            while data := self.sock.recv(self.piece):
                sink(data)
                total += len(data)
            return total
        n = int(fields[b"content-length"])
        self.exact(n, sink)
        return n


class BulkUpstream:
    def __init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0), backlog=512)
        self.port = self.listener.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.stopped = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self.stopped:
            try:
                sock, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(sock,), daemon=True).start()

    def _serve(self, sock: socket.socket) -> None:
        try:
            r = Reader(sock)
            while True:
                line, fields = r.head()
                method, target, _ = line.split(b" ")
                url = urlsplit(target.decode())
                q = {k: int(v[0]) for k, v in parse_qs(url.query).items()}
                if method == b"POST":
                    slow = q.get("slow", 0)
                    if slow:
                        time.sleep(slow / 1000)
                        # 2 MB/s for a while, then fast (paced from now: the connection may be reused)
                        r.piece, r.rate, r.t0, r.got = 4096, 4096 / 0.002, time.monotonic(), 0
                    h = hashlib.sha256()
                    t_fast = time.monotonic() + slow / 1000
                    def sink(b: bytearray, h=h, t_fast=t_fast) -> None:  # noqa: ANN001
                        h.update(b)
                        if r.rate and time.monotonic() > t_fast:
                            r.rate, r.piece = 0.0, 65536
                    n = r.body(fields, sink)
                    out = json.dumps({"len": n, "sha256": h.hexdigest()}).encode()
                    sock.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(out), out))
                    continue
                n, seed = q.get("n", 0), q.get("seed", 0)
                if url.path == "/chunked":
                    sock.sendall(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
                    pieces = chunked(seed, n)
                else:
                    sock.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % n)
                    pieces = stream(seed, n)
                batch: list = []
                size = 0
                for p in pieces:   # (small framing pieces batched: a syscall each would be slow)
                    batch.append(p)
                    size += len(p)
                    if size >= 65536:
                        sock.sendall(b"".join(batch) if len(batch) > 1 else batch[0])
                        batch, size = [], 0
                if batch:
                    sock.sendall(b"".join(batch))
        except (OSError, ValueError, ConnectionError):
            pass
        finally:
            sock.close()

    def stop(self) -> None:
        self.stopped = True
        self.listener.close()


def _sendall(sock: socket.socket, pieces) -> None:
    """Send pieces batched into sends of 64 KiB or more (a syscall per tiny chunk would make the
    gateway's reads as tiny as the chunks, which measures the sender, not the framing)."""
    batch: list = []
    size = 0
    for p in pieces:
        batch.append(p)
        size += len(p)
        if size >= 65536:
            sock.sendall(b"".join(batch) if len(batch) > 1 else batch[0])
            batch, size = [], 0
    if batch:
        sock.sendall(b"".join(batch))


def download(port: int, path: str, rate: float = 0.0, rcvbuf: int = 0, sock: socket.socket | None = None,
             version: bytes = b"1.1"):
    """GET path; returns (status, length, sha256 of the body)."""
    s = sock or socket.create_connection(("127.0.0.1", port))
    if rcvbuf:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    try:
        s.sendall(b"GET %s HTTP/%s\r\nHost: bulk\r\n\r\n" % (path.encode(), version))
        r = Reader(s, rate=rate)
        line, fields = r.head()
        h = hashlib.sha256()
        n = r.body(fields, h.update)
        return int(line.split()[1]), n, h.hexdigest()
    finally:
        if sock is None:
            s.close()


def upload(port: int, path: str, seed: int, n: int, chunk: bool) -> dict:
    """POST stream(seed, n) (chunked or sized) to path; returns the sink's JSON."""
    with socket.create_connection(("127.0.0.1", port)) as s:
        framing = b"Transfer-Encoding: chunked" if chunk else b"Content-Length: %d" % n
        s.sendall(b"POST %s HTTP/1.1\r\nHost: bulk\r\n%s\r\n\r\n" % (path.encode(), framing))
        sender = threading.Thread(target=_sendall, args=(s, chunked(seed, n) if chunk else stream(seed, n)))
        sender.start()
        r = Reader(s)
        line, fields = r.head()
        out = bytearray()
        r.body(fields, out.extend)
        sender.join()
        if int(line.split()[1]) != 200:
            raise ValueError(f"{line!r} {bytes(out)[:200]!r}")
        return json.loads(out)
