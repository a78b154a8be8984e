"""A WebSocket upstream (the `websockets` package) for integration tests.

    python tests/support/ws_upstream.py --port 0      # prints `listening HOST:PORT`

Paths: `/ws/echo` echoes every message; `/ws/flood` sends 64 KiB binary messages as fast as the
connection takes them (never reads); `/ws/sink` never reads what it is sent; `/ws/hello` sends
"hello" and then waits; `/ws/bye` sends "bye" and closes first. Any other path is answered 404 (a non-101 answer to the handshake).
"""
from __future__ import annotations

import argparse
import asyncio
import http

from websockets.asyncio.server import ServerConnection, serve
from websockets.http11 import Request, Response


async def handler(ws: ServerConnection) -> None:
    path = ws.request.path if ws.request is not None else ""
    if path.startswith("/ws/echo"):
        async for message in ws:
            await ws.send(message)
    elif path.startswith("/ws/flood"):
        chunk = b"x" * 65536
        while True:
            await ws.send(chunk)
    elif path.startswith("/ws/sink"):
        await asyncio.sleep(3600)
    elif path.startswith("/ws/bye"):
        await ws.send("bye")
        await ws.close()        # the upstream ends the connection first
    elif path.startswith("/ws/hello"):
        await ws.send("hello")
        await ws.wait_closed()


def route(conn: ServerConnection, request: Request) -> Response | None:
    if not request.path.startswith("/ws/"):
        return conn.respond(http.HTTPStatus.NOT_FOUND, "no such socket\n")
    return None


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--tls-cert")
    ap.add_argument("--tls-key")
    a = ap.parse_args()
    ssl_ctx = None
    if a.tls_cert:   # a wss:// upstream (the TLS tests)
        import ssl

        ssl_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ssl_ctx.load_cert_chain(a.tls_cert, a.tls_key)
    # max_queue: frames buffered before the server stops reading the socket (backpressure)
    async with serve(handler, "127.0.0.1", a.port, process_request=route, ping_interval=None,
                     max_size=2 ** 22, max_queue=4, ssl=ssl_ctx) as server:
        host, port = list(server.sockets)[0].getsockname()[:2]
        print(f"listening {host}:{port}", flush=True)
        await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(main())
