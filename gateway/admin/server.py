"""The admin listener: a small HTTP/1.1 server on httptools in front of the admin route table.

Not on the data-plane hot path: it favours being small and obviously correct, but it faces the same
hostile peers as the data plane and follows the same rules (gateway/http/downstream.pyx):

- Flow control: one request is answered at a time per connection, pipelined ones wait in order,
  and nothing more is read while MAX_PIPELINE wait or the transport is above its write high-water
  mark (AdminProtocol). A client that pipelines and never reads costs a bounded amount of memory.
- Limits: GATEWAY_MAX_URI_BYTES (414), GATEWAY_MAX_HEADER_BYTES and GATEWAY_MAX_HEADERS (431),
  decided as soon as crossed; bodies are buffered up to MAX_BODY (413, from Content-Length
  before reading when it is given).
- Deadlines on the per-loop Ticker: GATEWAY_HEADER_TIMEOUT for a whole head (absolute) and
  GATEWAY_BODY_TIMEOUT between body bytes (408), GATEWAY_KEEPALIVE_TIMEOUT idle (quiet close),
  GATEWAY_BODY_TIMEOUT for a client to drain our replies (abort).
- Connections: GATEWAY_ADMIN_MAX_CONNECTIONS served at once, the next answered 503 at once (as
  nginx's limit_conn does); accept() out of fds backs off quietly (AdminServer).
- Host check against DNS rebinding (421, api.HostCheck); Upgrade (400) and CONNECT (501) refused;
  the admin token compared as bytes (api.AdminApp).
- Every reply, errors included, leaves in request order; no exception escapes a callback.

Later issues extend the table (`routes.add(...)`): metrics, dashboard, JSON APIs whose writes need
`Authorization: Bearer $GATEWAY_ADMIN_TOKEN` (`write=True`). `/openapi.json` is generated from the
same table (gateway/admin/openapi.py), so a route added here is documented there.
"""
from __future__ import annotations

import asyncio
import errno
import logging
import socket
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from gateway.admin.api import (
    AdminApp,
    AdminRequest,
    AdminResponse,
    AdminRoutes,
    HostCheck,
    error_response,
    json_response,
    render,
)
from gateway.admin.openapi import openapi_handler
from gateway.admin.protocol import INF, AdminProtocol
from gateway.http.flow import ticker_for

if TYPE_CHECKING:
    from gateway.config import Settings
    from gateway.http.flow import Ticker

log = logging.getLogger("gateway.admin")

__all__ = ["AdminApp", "AdminProtocol", "AdminServer", "base_routes", "render"]

BACKLOG = 511               # nginx's default listen backlog on Linux (the kernel caps it at somaxconn)
ACCEPT_BATCH = 16           # accepts per readiness event, so one busy listener cannot starve the loop
ACCEPT_RETRY_MIN = 0.5      # after a failed accept() (EMFILE...), the first retry; doubling up to
ACCEPT_RETRY_MAX = 2.0
ACCEPT_LOG_EVERY = 60.0     # a failing accept() is logged at most once per minute

class AdminServer:
    """The admin listener on GATEWAY_ADMIN_HOST:GATEWAY_ADMIN_PORT, with the limits of `settings`.

    It accepts connections itself (a reader on the listening sockets, `connect_accepted_socket`
    for each accepted one) rather than through `loop.create_server`, for two things asyncio
    servers cannot do:

    - Connection cap (GATEWAY_ADMIN_MAX_CONNECTIONS), the way nginx's limit_conn works: at most
      that many connections are served at once; one more is accepted and answered at once with
      503 (`too_many_connections`, Retry-After: 1) and closed, so a client, a probe or an
      operator's curl learns why instead of hanging. Those refusals are bounded too: while as
      many connections again are being refused (each lingers at most LINGER_TIME), accepting
      stops and new connections wait in the kernel's backlog until a slot frees.
    - accept() failing with EMFILE/ENFILE (or ENOBUFS, ENOMEM): accepting stops, new connections
      wait in the backlog, and accept is retried after 0.5 s, doubling up to 2 s, or as soon as
      one of our connections closes (an fd came free). One warning when it starts failing and at
      most one a minute after that, never a line per attempt. (uvloop's own listener, through
      libuv, instead accepts and at once closes every queued connection while out of fds, so
      each client gets a reset, and closes the listener for good, without a word, if that trick
      fails too; asyncio's selector loop logs an error per attempt.)
    """

    def __init__(self, routes: AdminRoutes, settings: Settings) -> None:
        self.routes = routes
        self.settings = settings
        self.app = AdminApp(routes, settings.admin_token)
        self.max_connections = settings.admin_max_connections
        self.hosts = HostCheck(settings.admin_hosts)
        self.too_many = error_response(
            503, "too_many_connections",
            f"the admin API serves at most {self.max_connections} connections at once; retry shortly",
            [("Retry-After", "1")])
        self.loop: asyncio.AbstractEventLoop | None = None
        self.ticker: Ticker = None  # type: ignore[assignment]  # set by start()
        self.sockets: list[socket.socket] = []
        self.connections: set[AdminProtocol] = set()  # served (counted from accept to connection_lost)
        self.refusing: set[AdminProtocol] = set()     # over the cap, being answered 503
        self._accepting = False
        self._closed = False
        self._retry_at = INF
        self._retry_delay = 0.0
        self._failed_accepts = 0
        self._last_report = -INF
        # GATEWAY_ADMIN_TLS_CERT/_KEY: HTTPS, with the certificate reloaded on SIGHUP (reload_tls);
        # a connection takes the context in force when it is accepted.
        from gateway.tls import ServerTLS

        self.tls = ServerTLS.admin(settings)

    def reload_tls(self) -> bool | None:
        """SIGHUP: load the admin certificate again (None when the admin listener is plain)."""
        if self.tls is None:
            return None
        if not self.tls.reload():
            return False
        self.tls.reloaded("admin")     # (each accept reads the context in force: in use already)
        return True

    async def start(self, loop: asyncio.AbstractEventLoop, host: str, port: int) -> None:
        self.loop = loop
        self.ticker = ticker_for(loop)  # the data plane's per-loop timer, shared when both run here
        try:
            self.sockets = await _bind(loop, host, port)
        except OSError as exc:
            raise OSError(
                exc.errno, f"cannot listen on {host}:{port} for the admin API: {exc.strerror or exc} "
                f"(set GATEWAY_ADMIN_PORT to a free port, or GATEWAY_ADMIN_HOST)"
            ) from None
        self._resume_accepting()
        log.info("admin listening on %s:%d%s (max %d connections)", host, port,
                 " (TLS)" if self.tls is not None else "", self.max_connections)

    def close(self) -> None:
        """Stop listening (connections already accepted finish on their own)."""
        self._closed = True
        self._pause_accepting()
        if self.ticker is not None:
            self.ticker.discard(self)
        for s in self.sockets:
            s.close()
        self.sockets = []

    # ------------------------------------------------------------------ accepting
    def _resume_accepting(self) -> None:
        if self._accepting or self._closed or self._retry_at != INF or self.loop is None:
            return
        if len(self.connections) >= self.max_connections and len(self.refusing) >= self.max_connections:
            return
        for s in self.sockets:
            self.loop.add_reader(s.fileno(), self._on_readable, s)
        self._accepting = True

    def _pause_accepting(self) -> None:
        if not self._accepting or self.loop is None:
            return
        self._accepting = False
        for s in self.sockets:
            self.loop.remove_reader(s.fileno())

    def _on_readable(self, sock: socket.socket) -> None:
        try:
            for _ in range(ACCEPT_BATCH):
                over = len(self.connections) >= self.max_connections
                if over and len(self.refusing) >= self.max_connections:
                    self._pause_accepting()  # the kernel's backlog holds the next ones
                    return
                try:
                    conn, _ = sock.accept()
                except (BlockingIOError, InterruptedError):
                    return
                except ConnectionAbortedError:
                    continue  # the client gave up while queued
                except OSError as exc:
                    self._accept_failed(exc)
                    return
                if self._failed_accepts:
                    log.debug("admin listener accepting again after %d failed accept()s", self._failed_accepts)
                    self._failed_accepts = 0
                self._retry_delay = 0.0
                self._attach(conn, over)
        except Exception as exc:  # noqa: BLE001 - a bug here must not spin or kill the listener
            self._accept_failed(exc)

    def _accept_failed(self, exc: Exception) -> None:
        """Stop accepting for a while; new connections wait in the kernel's backlog meanwhile."""
        assert self.loop is not None
        self._pause_accepting()
        self._failed_accepts += 1
        self._retry_delay = min(max(self._retry_delay * 2, ACCEPT_RETRY_MIN), ACCEPT_RETRY_MAX)
        now = self.loop.time()
        self._retry_at = now + self._retry_delay
        self.ticker.add(self)
        if now - self._last_report >= ACCEPT_LOG_EVERY:
            self._last_report = now
            exhausted = isinstance(exc, OSError) and exc.errno in _RESOURCE_ERRNOS
            log.log(logging.WARNING if exhausted else logging.ERROR,
                    "admin listener: accept() failed (%s; %d attempt(s) since the last report): "
                    "not accepting for now, new connections wait in the backlog; retrying quietly",
                    exc, self._failed_accepts, exc_info=None if exhausted else exc)

    def on_tick(self, now: float) -> None:
        """The Ticker's call while accepting is suspended after a failed accept()."""
        if now >= self._retry_at:
            self._retry_now()

    def _retry_now(self) -> None:
        self._retry_at = INF
        self.ticker.discard(self)
        self._resume_accepting()

    def _attach(self, conn: socket.socket, over: bool) -> None:
        assert self.loop is not None
        conn.setblocking(False)
        try:
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:
            pass
        proto = AdminProtocol(self, over_capacity=over)
        (self.refusing if over else self.connections).add(proto)
        self.loop.create_task(self._connect(conn, proto))

    async def _connect(self, conn: socket.socket, proto: AdminProtocol) -> None:
        assert self.loop is not None
        try:
            if self.tls is None:
                await self.loop.connect_accepted_socket(lambda: proto, conn)
            else:
                # The handshake is bounded like a head (a peer that stalls it holds a slot only
                # that long); the connection counts against the cap from accept on.
                await self.loop.connect_accepted_socket(
                    lambda: proto, conn, ssl=self.tls.context,
                    ssl_handshake_timeout=self.settings.header_timeout)
        except Exception as exc:  # noqa: BLE001 - e.g. reset before the transport was set up
            log.debug("admin connection could not be set up: %s", exc)
            conn.close()
            self.release(proto)

    def release(self, proto: AdminProtocol) -> None:
        """A connection is gone (AdminProtocol.connection_lost): its slot and its fd are free."""
        if proto in self.connections:
            self.connections.discard(proto)
        elif proto in self.refusing:
            self.refusing.discard(proto)
        else:
            return
        if self._retry_at != INF:
            self._retry_now()  # an fd came free: try now rather than at the next tick
        else:
            self._resume_accepting()


_RESOURCE_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})


async def _bind(loop: asyncio.AbstractEventLoop, host: str, port: int) -> list[socket.socket]:
    """Listening, non-blocking sockets for every address `host` resolves to (like create_server)."""
    infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    socks: list[socket.socket] = []
    seen = set()
    try:
        for family, type_, proto, _, addr in infos:
            if (family, addr) in seen:
                continue
            seen.add((family, addr))
            s = socket.socket(family, type_, proto)
            socks.append(s)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            s.bind(addr)
            s.listen(BACKLOG)
            s.setblocking(False)
    except OSError:
        for s in socks:
            s.close()
        raise
    return socks


def base_routes(ready: Callable[[], tuple[bool, dict[str, Any]]], health: Callable[[], dict[str, Any]]) -> AdminRoutes:
    """/health, /ready, /openapi.json; features add theirs to the table. `health()` and `ready()`
    build their bodies with gateway/admin/health.py, the one shape of both kinds of process."""
    from gateway.admin.health import HEALTH_RESPONSES, READY_RESPONSES

    routes = AdminRoutes()

    def get_health(req: AdminRequest) -> AdminResponse:
        return json_response({"status": "ok", **health()})

    def get_ready(req: AdminRequest) -> AdminResponse:
        ok, body = ready()
        return json_response({"status": "ready" if ok else "not_ready", **body}, 200 if ok else 503)

    routes.add("GET", "/health", get_health, summary="Liveness: 200 while the process serves", tag="health",
               responses=HEALTH_RESPONSES)
    routes.add("GET", "/ready", get_ready, summary="Readiness: 200 when the node should get traffic (the "
               "configuration is loaded, a worker serves and none is stalled, not draining, a configured "
               "Redis reachable)", tag="health", responses=READY_RESPONSES)
    routes.add("GET", "/openapi.json", openapi_handler(routes), summary="This OpenAPI 3.1 document", tag="meta",
               responses={"200": {"description": "OpenAPI 3.1 document"}})
    return routes
