"""A real upstream server for integration tests: `python tests/support/upstream.py --port N`.

It answers every request with JSON echoing what it received, so a test can see exactly what the
gateway forwarded: method, raw target, HTTP version, the headers as a list in wire order (names as
sent), the body length and its sha256, plus `conn` (a per-connection number, to see keep-alive reuse)
and `seq` (the request's number on that connection). Behaviours are selected by path:

  /slow?ms=N            wait N ms before sending anything (read-timeout tests)
  /slowbody?ms=N        send the head and half the body, wait N ms, send the rest
  /chunked?n=K&size=S   chunked response: K chunks of S bytes (default 3 x 10)
  /large?bytes=N        Content-Length response of N bytes (pattern b"0123456789"), written in
                        64 KiB pieces honouring pause_writing (a slow reader backs it up)
  /status/NNN           respond with status NNN (204/304 without body, others with the echo)
  /1xx                  send "103 Early Hints" and "100 Continue" before the 200 echo
  /reset                send a head announcing 1000 bytes, 10 bytes of body, then a TCP RST
  /garbage              send bytes that are not HTTP, then close
  /close                close without sending anything
  /header?name=N&value=V  add one response header (e.g. Server, Connection, X-Powered-By)

The echo also carries `total`: how many requests this process has received so far, this one
included, on every connection (a test that must show nothing was forwarded compares two totals).

HEAD requests get the head of the echo response (with its Content-Length) and no body. Every
response also carries `Server: test-upstream` and `X-Powered-By: test` (the gateway must remove
them) and `Keep-Alive: timeout=30` (hop-by-hop: must not reach the client).

On start it prints `listening <host>:<port>` (flushed) so a parent can wait for it; `--port 0`
picks a free port. Deliberately plain asyncio + httptools: small and obviously correct.
"""
from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import socket
import struct
import sys
from urllib.parse import parse_qs, urlsplit

import httptools

_conn_counter = 0
_requests = 0


class UpstreamProtocol(asyncio.Protocol):
    def __init__(self) -> None:
        global _conn_counter
        _conn_counter += 1
        self.conn_id = _conn_counter
        self.seq = 0
        self.parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None
        self.queue: asyncio.Queue[dict | None] = asyncio.Queue()
        self.can_write = asyncio.Event()
        self.can_write.set()
        self.cur: dict = {}
        self.task: asyncio.Task | None = None

    # --- asyncio.Protocol ---
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.task = asyncio.get_running_loop().create_task(self.serve())

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            pass
        except httptools.HttpParserError:
            assert self.transport is not None
            self.transport.write(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.queue.put_nowait(None)
        self.can_write.set()

    def pause_writing(self) -> None:
        self.can_write.clear()

    def resume_writing(self) -> None:
        self.can_write.set()

    # --- httptools callbacks: accumulate only ---
    def on_message_begin(self) -> None:
        self.cur = {"url": b"", "headers": [], "sha": hashlib.sha256(), "len": 0}

    def on_url(self, url: bytes) -> None:
        self.cur["url"] += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self.cur["headers"].append([name.decode("latin-1"), value.decode("latin-1")])

    def on_body(self, body: bytes) -> None:
        self.cur["sha"].update(body)
        self.cur["len"] += len(body)

    def on_message_complete(self) -> None:
        global _requests
        _requests += 1
        self.cur["total"] = _requests
        self.cur["method"] = self.parser.get_method().decode()
        self.cur["version"] = self.parser.get_http_version()
        self.cur["keep_alive"] = self.parser.should_keep_alive()
        self.queue.put_nowait(self.cur)

    # --- responses, in order, one request at a time ---
    async def serve(self) -> None:
        while True:
            req = await self.queue.get()
            if req is None or self.transport is None or self.transport.is_closing():
                return
            self.seq += 1
            try:
                keep = await self.respond(req)
            except ConnectionError:
                return
            if not keep:
                self.transport.close()
                return

    async def write(self, data: bytes) -> None:
        assert self.transport is not None
        await self.can_write.wait()
        if self.transport.is_closing():
            raise ConnectionError("closed")
        self.transport.write(data)

    async def respond(self, req: dict) -> bool:
        """Send one response; return whether the connection stays open."""
        assert self.transport is not None
        raw_target = req["url"]
        parts = urlsplit(raw_target.decode("latin-1"))
        path = parts.path
        q = {k: v[-1] for k, v in parse_qs(parts.query).items()}
        head_only = req["method"] == "HEAD"
        echo = {
            "method": req["method"],
            "target": raw_target.decode("latin-1"),
            "version": req["version"],
            "headers": req["headers"],
            "body_length": req["len"],
            "body_sha256": req["sha"].hexdigest(),
            "conn": self.conn_id,
            "seq": self.seq,
            "total": req["total"],
        }
        body = json.dumps(echo).encode()
        status = 200
        extra: list[tuple[str, str]] = []

        if path == "/close":
            self.transport.close()
            return False
        if path == "/garbage":
            self.transport.write(b"\x00\x01NOT HTTP AT ALL\r\n\r\n")
            return False
        if path == "/reset":
            await self.write(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n0123456789")
            await asyncio.sleep(0.05)
            sock = self.transport.get_extra_info("socket")
            # SO_LINGER with a zero timeout turns close() into a RST: a genuine reset mid-response.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.transport.abort()
            return False
        if path == "/slow":
            await asyncio.sleep(int(q.get("ms", "1000")) / 1000)
        if path == "/1xx":
            await self.write(b"HTTP/1.1 103 Early Hints\r\nLink: </style.css>; rel=preload\r\n\r\n")
            await self.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        if path.startswith("/status/"):
            status = int(path[len("/status/"):])
        if path == "/header":
            extra.append((q.get("name", "X-Test"), q.get("value", "")))

        common = "Server: test-upstream\r\nX-Powered-By: test\r\nKeep-Alive: timeout=30\r\n"
        common += "".join(f"{n}: {v}\r\n" for n, v in extra)
        conn_hdr = "" if req["keep_alive"] else "Connection: close\r\n"

        if path == "/chunked":
            n, size = int(q.get("n", "3")), int(q.get("size", "10"))
            await self.write(
                f"HTTP/1.1 200 OK\r\n{common}{conn_hdr}Transfer-Encoding: chunked\r\n\r\n".encode())
            if not head_only:
                for i in range(n):
                    chunk = (str(i % 10) * size).encode()
                    await self.write(b"%x;ext=1\r\n%s\r\n" % (len(chunk), chunk))
                await self.write(b"0\r\nX-Trailer: t\r\n\r\n")
            return req["keep_alive"]

        if path == "/large":
            total = int(q.get("bytes", "1048576"))
            await self.write(
                f"HTTP/1.1 200 OK\r\n{common}{conn_hdr}Content-Length: {total}\r\n\r\n".encode())
            if not head_only:
                piece = b"0123456789" * 6554  # ~64 KiB
                sent = 0
                while sent < total:
                    out = piece[: total - sent]
                    await self.write(out)
                    sent += len(out)
            return req["keep_alive"]

        if path == "/slowbody":
            await self.write(
                f"HTTP/1.1 200 OK\r\n{common}{conn_hdr}Content-Type: application/json\r\n"
                f"Content-Length: {len(body)}\r\n\r\n".encode())
            half = len(body) // 2
            await self.write(body[:half])
            await asyncio.sleep(int(q.get("ms", "1000")) / 1000)
            await self.write(body[half:])
            return req["keep_alive"]

        reason = {200: "OK", 204: "No Content", 304: "Not Modified"}.get(status, "Status")
        if status in (204, 304) or 100 <= status < 200:
            await self.write(f"HTTP/1.1 {status} {reason}\r\n{common}{conn_hdr}\r\n".encode())
            return req["keep_alive"]
        head = (f"HTTP/1.1 {status} {reason}\r\n{common}{conn_hdr}Content-Type: application/json\r\n"
                f"Content-Length: {len(body)}\r\n\r\n").encode()
        await self.write(head if head_only else head + body)
        return req["keep_alive"]


async def main(host: str, port: int, cert: str | None = None, key: str | None = None) -> None:
    loop = asyncio.get_running_loop()
    ssl_ctx = None
    if cert:   # --tls-cert/--tls-key: an https upstream (the upstream-TLS tests)
        import ssl

        ssl_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ssl_ctx.load_cert_chain(cert, key)
    server = await loop.create_server(UpstreamProtocol, host, port, reuse_address=True, backlog=4096, ssl=ssl_ctx)
    bound = server.sockets[0].getsockname()
    print(f"listening {bound[0]}:{bound[1]}", flush=True)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--tls-cert")
    ap.add_argument("--tls-key")
    args = ap.parse_args()
    try:
        import uvloop
        uvloop.install()
    except ImportError:  # plain asyncio works too, just slower
        pass
    try:
        asyncio.run(main(args.host, args.port, args.tls_cert, args.tls_key))
    except KeyboardInterrupt:
        sys.exit(0)
