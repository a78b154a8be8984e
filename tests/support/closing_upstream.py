"""An upstream that closes each keep-alive connection as the next request arrives on it.

    python tests/support/closing_upstream.py --port 0 [--serve 1] [--rst]

Each connection answers `--serve` requests (200, body `conn=<n> req=<k> <method> <body>`), and when
the next request's bytes arrive it closes the connection without a byte of response (with `--rst`:
a TCP reset, SO_LINGER 0): to the proxy in front, exactly an idle pooled connection that the
upstream closed just as the request was written. Prints `listening HOST:PORT` once ready.
"""
from __future__ import annotations

import argparse
import asyncio
import socket
import struct


class Closing(asyncio.Protocol):
    count = 0

    def __init__(self, serve: int, rst: bool) -> None:
        Closing.count += 1
        self.n = Closing.count
        self.serve = serve
        self.rst = rst
        self.buf = b""
        self.served = 0
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        assert self.transport is not None
        if self.served >= self.serve:
            if self.rst:
                sock = self.transport.get_extra_info("socket")
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.transport.close()
            return
        self.buf += data
        while b"\r\n\r\n" in self.buf:
            head, rest = self.buf.split(b"\r\n\r\n", 1)
            length = 0
            for line in head.split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
            if len(rest) < length:
                return
            body, self.buf = rest[:length], rest[length:]
            self.served += 1
            method = head.split(b" ", 1)[0]
            out = b"conn=%d req=%d %s %s" % (self.n, self.served, method, body)
            self.transport.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(out), out))
            if self.served >= self.serve:
                self.buf = b""
                return


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--serve", type=int, default=1)
    ap.add_argument("--rst", action="store_true")
    a = ap.parse_args()
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: Closing(a.serve, a.rst), "127.0.0.1", a.port)
    host, port = server.sockets[0].getsockname()[:2]
    print(f"listening {host}:{port}", flush=True)
    await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(main())
