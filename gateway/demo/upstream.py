"""The in-process demo upstream of `gateway demo`: a few JSON endpoints on a loopback port.

  GET  /users          the demo users          GET  /users/{id}   one user (404 if unknown)
  GET  /orders         the orders so far       POST /orders       create one from a JSON body (201)
  *    /echo...        echoes method, path, query, headers and body (to see what the gateway sent)

Runs on the gateway's own event loop, so the demo needs no second process. Answers synchronously
(responses in order, keep-alive), Content-Length framing, bodies capped at 1 MiB.
"""
from __future__ import annotations

import asyncio
from typing import Any

import httptools
import orjson

MAX_BODY = 1 << 20

USERS = [
    {"id": 1, "name": "Ada Lovelace", "email": "ada@example.com", "org": "acme"},
    {"id": 2, "name": "Alan Turing", "email": "alan@example.com", "org": "acme"},
    {"id": 3, "name": "Grace Hopper", "email": "grace@example.com", "org": "navy"},
]


class DemoState:
    def __init__(self) -> None:
        self.orders: list[dict[str, Any]] = [
            {"id": 1, "user_id": 1, "item": "analytical engine", "quantity": 1},
        ]


def _response(status: int, obj: Any, reason: str, keep_alive: bool) -> bytes:
    body = orjson.dumps(obj)
    head = (
        f"HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n{'' if keep_alive else 'Connection: close' + chr(13) + chr(10)}\r\n"
    )
    return head.encode("latin-1") + body


class DemoUpstreamProtocol(asyncio.Protocol):
    def __init__(self, state: DemoState) -> None:
        self.state = state
        self.parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None
        self.url = b""
        self.headers: list[tuple[str, str]] = []
        self.body = bytearray()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            if self.transport is not None:
                self.transport.write(_response(400, {"error": "bad_request"}, "Bad Request", False))
                self.transport.close()

    def on_message_begin(self) -> None:
        self.url = b""
        self.headers = []
        self.body = bytearray()

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name.decode("latin-1"), value.decode("latin-1")))

    def on_body(self, body: bytes) -> None:
        if len(self.body) < MAX_BODY:
            self.body += body

    def on_message_complete(self) -> None:
        if self.transport is None:
            return
        keep_alive = self.parser.should_keep_alive()
        method = self.parser.get_method().decode()
        url = httptools.parse_url(self.url)
        path = (url.path or b"/").decode("utf-8", "replace")
        query = (url.query or b"").decode("utf-8", "replace")
        status, obj = self.handle(method, path, query)
        reason = {200: "OK", 201: "Created", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed"}[status]
        self.transport.write(_response(status, obj, reason, keep_alive))
        if not keep_alive:
            self.transport.close()

    def handle(self, method: str, path: str, query: str) -> tuple[int, Any]:
        if path == "/echo" or path.startswith("/echo/"):
            return 200, {
                "method": method, "path": path, "query": query,
                "headers": dict(self.headers),
                "body": bytes(self.body).decode("utf-8", "replace"),
            }
        if path == "/users":
            return (200, {"users": USERS}) if method == "GET" else (405, {"error": "method_not_allowed"})
        if path.startswith("/users/"):
            key = path[len("/users/"):]
            for u in USERS:
                if str(u["id"]) == key:
                    return 200, u
            return 404, {"error": "not_found", "message": f"no user {key}"}
        if path == "/orders":
            if method == "GET":
                return 200, {"orders": self.state.orders}
            if method == "POST":
                try:
                    order = orjson.loads(self.body) if self.body else {}
                except orjson.JSONDecodeError:
                    return 400, {"error": "bad_request", "message": "the body is not valid JSON"}
                if not isinstance(order, dict):
                    return 400, {"error": "bad_request", "message": "expected a JSON object"}
                order = {**order, "id": len(self.state.orders) + 1}
                self.state.orders.append(order)
                return 201, order
            return 405, {"error": "method_not_allowed"}
        return 404, {"error": "not_found", "message": f"the demo upstream has no {path}"}


async def start_demo_upstream(loop: asyncio.AbstractEventLoop, host: str = "127.0.0.1") -> asyncio.AbstractServer:
    """Listen on a free loopback port; the caller reads it from server.sockets[0]."""
    state = DemoState()
    return await loop.create_server(lambda: DemoUpstreamProtocol(state), host, 0)
