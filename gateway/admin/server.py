"""The admin listener: a tiny HTTP/1.1 server on httptools with a route table.

Not on the data-plane hot path: it favours being small and obviously correct. One request is
handled at a time per connection (pipelined requests wait in arrival order), bodies are buffered
(capped at MAX_BODY), every answer is JSON unless a handler says otherwise.

Later issues extend the table (`routes.add(...)`): metrics, dashboard, JSON APIs whose writes need
`Authorization: Bearer $GATEWAY_ADMIN_TOKEN` (`write=True`). `/openapi.json` is generated from the
same table (gateway/admin/openapi.py), so a route added here is documented there.
"""
from __future__ import annotations

import asyncio
import hmac
import inspect
import logging
from collections.abc import Callable
from typing import Any

import httptools

from gateway.admin.api import (
    AdminError,
    AdminRequest,
    AdminResponse,
    AdminRoutes,
    error_response,
    json_response,
)
from gateway.admin.openapi import openapi_handler

log = logging.getLogger("gateway.admin")

MAX_BODY = 1 << 20
MAX_PIPELINE = 16


class AdminApp:
    """Dispatch: route resolution, the bearer-token check for writes, handler errors → JSON."""

    def __init__(self, routes: AdminRoutes, admin_token: str | None) -> None:
        self.routes = routes
        self._token = admin_token.encode() if admin_token else None

    def authorize(self, req: AdminRequest) -> AdminResponse | None:
        if self._token is None:
            return error_response(403, "read_only", "admin writes are disabled: GATEWAY_ADMIN_TOKEN is not set")
        auth = req.headers.get("authorization", "")
        scheme, _, token = auth.partition(" ")
        # compare_digest: the time taken does not reveal how much of the token was right.
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), self._token):
            return error_response(401, "unauthorized", "a valid admin bearer token is required",
                                  [("WWW-Authenticate", 'Bearer realm="gateway-admin"')])
        return None

    async def handle(self, req: AdminRequest) -> AdminResponse:
        found = self.routes.resolve(req.method, req.path)
        if isinstance(found, AdminResponse):
            return found
        route, req.params = found
        if route.write:
            denied = self.authorize(req)
            if denied is not None:
                return denied
        try:
            result = route.handler(req)
            if inspect.isawaitable(result):
                result = await result
            return result
        except AdminError as exc:
            return error_response(exc.status, exc.code, exc.message, exc.headers)
        except Exception:  # noqa: BLE001 - a handler bug answers 500, never kills the listener
            log.exception("admin handler %s %s failed", route.method, route.pattern)
            return error_response(500, "internal_error", "the admin handler failed")


_REASONS = {200: "OK", 201: "Created", 202: "Accepted", 204: "No Content", 400: "Bad Request",
            401: "Unauthorized", 403: "Forbidden", 404: "Not Found", 405: "Method Not Allowed",
            409: "Conflict", 413: "Content Too Large", 500: "Internal Server Error",
            503: "Service Unavailable"}


def render(resp: AdminResponse, keep_alive: bool, head_only: bool = False) -> bytes:
    lines = [
        f"HTTP/1.1 {resp.status} {_REASONS.get(resp.status, 'Status')}",
        f"Content-Type: {resp.content_type}",
        f"Content-Length: {len(resp.body)}",
        "Cache-Control: no-store",
        "X-Content-Type-Options: nosniff",
    ]
    lines += [f"{k}: {v}" for k, v in resp.headers]
    if not keep_alive:
        lines.append("Connection: close")
    head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
    return head if head_only else head + resp.body


class AdminProtocol(asyncio.Protocol):
    def __init__(self, app: AdminApp) -> None:
        self.app = app
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpRequestParser(self)
        self.url = b""
        self.headers: dict[str, str] = {}
        self.body = bytearray()
        self.too_large = False
        self.pending: list[tuple[AdminRequest | AdminResponse, bool, bool]] = []
        self.busy = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            self._send(error_response(400, "bad_request", "malformed HTTP request"), False, False)
            return
        if len(self.pending) > MAX_PIPELINE and self.transport is not None:
            self.transport.pause_reading()

    # httptools callbacks: accumulate only.
    def on_message_begin(self) -> None:
        self.url = b""
        self.headers = {}
        self.body = bytearray()
        self.too_large = False

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers[name.decode("latin-1").lower()] = value.decode("latin-1")

    def on_body(self, body: bytes) -> None:
        if len(self.body) + len(body) > MAX_BODY:
            self.too_large = True
        else:
            self.body += body

    def on_message_complete(self) -> None:
        method = self.parser.get_method().decode("ascii", "replace")
        keep_alive = self.parser.should_keep_alive()
        if self.too_large:
            item: AdminRequest | AdminResponse = error_response(413, "body_too_large", "admin bodies are limited to 1 MiB")
            keep_alive = False
        else:
            try:
                parsed = httptools.parse_url(self.url)
                path = (parsed.path or b"/").decode("utf-8", "replace")
                query = (parsed.query or b"").decode("utf-8", "replace")
                item = AdminRequest(method, path, query, self.headers, bytes(self.body))
            except httptools.HttpParserInvalidURLError:
                item = error_response(400, "bad_request", "invalid request target")
        self.pending.append((item, keep_alive, method == "HEAD"))
        if not self.busy:
            self.busy = True
            asyncio.get_running_loop().create_task(self._drain_pending())

    async def _drain_pending(self) -> None:
        try:
            while self.pending and self.transport is not None:
                item, keep_alive, head_only = self.pending.pop(0)
                resp = item if isinstance(item, AdminResponse) else await self.app.handle(item)
                self._send(resp, keep_alive, head_only)
                if not keep_alive:
                    return
                if self.transport is not None and len(self.pending) <= MAX_PIPELINE:
                    self.transport.resume_reading()
        finally:
            self.busy = False

    def _send(self, resp: AdminResponse, keep_alive: bool, head_only: bool) -> None:
        t = self.transport
        if t is None:
            return
        t.write(render(resp, keep_alive, head_only))
        if not keep_alive:
            self.pending.clear()
            t.close()


class AdminServer:
    """The admin listener on GATEWAY_ADMIN_HOST:GATEWAY_ADMIN_PORT."""

    def __init__(self, routes: AdminRoutes, admin_token: str | None) -> None:
        self.routes = routes
        self.app = AdminApp(routes, admin_token)
        self._server: asyncio.AbstractServer | None = None

    async def start(self, loop: asyncio.AbstractEventLoop, host: str, port: int) -> None:
        try:
            self._server = await loop.create_server(lambda: AdminProtocol(self.app), host, port,
                                                    reuse_address=True)
        except OSError as exc:
            raise OSError(
                exc.errno, f"cannot listen on {host}:{port} for the admin API: {exc.strerror or exc} "
                f"(set GATEWAY_ADMIN_PORT to a free port, or GATEWAY_ADMIN_HOST)"
            ) from None
        log.info("admin listening on %s:%d", host, port)

    def close(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None


def base_routes(ready: Callable[[], tuple[bool, dict[str, Any]]], health: Callable[[], dict[str, Any]]) -> AdminRoutes:
    """The routes of issue 2: /health, /ready, /openapi.json. Later issues add theirs to the table."""
    routes = AdminRoutes()

    def get_health(req: AdminRequest) -> AdminResponse:
        return json_response({"status": "ok", **health()})

    def get_ready(req: AdminRequest) -> AdminResponse:
        ok, details = ready()
        return json_response({"status": "ready" if ok else "not_ready", **details}, 200 if ok else 503)

    routes.add("GET", "/health", get_health, summary="Liveness: 200 while the process serves", tag="health",
               responses={"200": {"description": "The process serves"}})
    routes.add("GET", "/ready", get_ready, summary="Readiness: 200 when the configuration is loaded "
               "and the gateway is not draining", tag="health",
               responses={"200": {"description": "Ready"}, "503": {"description": "Not ready (draining, no workers)"}})
    routes.add("GET", "/openapi.json", openapi_handler(routes), summary="This OpenAPI 3.1 document", tag="meta",
               responses={"200": {"description": "OpenAPI 3.1 document"}})
    return routes
