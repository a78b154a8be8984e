"""The admin API's vocabulary: requests, responses, errors, the route table, and the rules that
do not depend on the socket: dispatch with the admin token check (AdminApp), which Hosts are
answered (HostCheck), and how a response is rendered on the wire.

Its own module so that imports point one way: the listener (server.py) and the OpenAPI generator
(openapi.py) both build on these types, and neither imports the other's internals.
"""
from __future__ import annotations

import hmac
import inspect
import ipaddress
import logging
import re
from collections.abc import Awaitable, Callable
from typing import Any

import orjson

log = logging.getLogger("gateway.admin")


class AdminRequest:
    """One admin request.

    headers:     lowercased names; values decoded latin-1 (lossless, for display and plain ASCII
                 values); a repeated field keeps its last value.
    raw_headers: every field as received, (lowercased name, value bytes), repeats included.
                 Credentials are compared on these bytes, never on a decoded str. When not given
                 (tests, internal callers), built from `headers`, whose str values are then taken
                 as text and encoded UTF-8 (what a UTF-8 client would have sent).
    """

    __slots__ = ("method", "path", "query", "headers", "body", "params", "raw_headers", "client_ip")

    def __init__(
        self,
        method: str,
        path: str,
        query: str,
        headers: dict[str, str],
        body: bytes,
        raw_headers: list[tuple[bytes, bytes]] | None = None,
    ) -> None:
        self.method = method
        self.path = path
        self.query = query
        self.headers = headers
        self.body = body
        self.params: dict[str, str] = {}
        if raw_headers is None:
            raw_headers = [(k.lower().encode("latin-1", "replace"), v.encode("utf-8", "surrogateescape"))
                           for k, v in headers.items()]
        self.raw_headers = raw_headers
        self.client_ip: str | None = None   # the peer's address; None for internal callers

    def header_values(self, name: bytes) -> list[bytes]:
        """Every value of field `name` (lowercase bytes), as received, in order."""
        return [v for n, v in self.raw_headers if n == name]

    def json(self) -> Any:
        """The body parsed as JSON (None when empty); raises AdminError(400) when invalid."""
        if not self.body:
            return None
        try:
            return orjson.loads(self.body)
        except orjson.JSONDecodeError:
            raise AdminError(400, "bad_request", "the body is not valid JSON") from None


class AdminResponse:
    __slots__ = ("status", "body", "content_type", "headers")

    def __init__(
        self,
        status: int,
        body: bytes,
        content_type: str = "application/json",
        headers: list[tuple[str, str]] | None = None,
    ) -> None:
        self.status = status
        self.body = body
        self.content_type = content_type
        self.headers = headers or []


class AdminError(Exception):
    """Raised by handlers to answer with the JSON error body of SPEC §4."""

    def __init__(self, status: int, code: str, message: str, headers: list[tuple[str, str]] | None = None):
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers or []


def json_response(obj: Any, status: int = 200, headers: list[tuple[str, str]] | None = None) -> AdminResponse:
    return AdminResponse(status, orjson.dumps(obj), "application/json", headers)


def error_response(status: int, code: str, message: str, headers: list[tuple[str, str]] | None = None) -> AdminResponse:
    return json_response({"error": code, "message": message, "request_id": None}, status, headers)


Handler = Callable[[AdminRequest], "AdminResponse | Awaitable[AdminResponse]"]

_PARAM = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")


class AdminRoute:
    __slots__ = ("method", "pattern", "handler", "write", "auth", "summary", "responses", "request_body", "tag",
                 "_regex")

    def __init__(
        self,
        method: str,
        pattern: str,
        handler: Handler,
        *,
        write: bool,
        summary: str,
        responses: dict[str, Any] | None,
        request_body: dict[str, Any] | None,
        tag: str,
        auth: bool | None = None,
    ) -> None:
        self.method = method
        self.pattern = pattern
        self.handler = handler
        self.write = write
        self.auth = write if auth is None else auth   # needs the admin token (every write does)
        self.summary = summary
        self.responses = responses or {"200": {"description": "OK"}}
        self.request_body = request_body
        self.tag = tag
        # "/services/{name}/targets" -> ^/services/(?P<name>[^/]+)/targets$
        parts, pos = [], 0
        for m in _PARAM.finditer(pattern):
            parts += [re.escape(pattern[pos:m.start()]), f"(?P<{m.group(1)}>[^/]+)"]
            pos = m.end()
        parts.append(re.escape(pattern[pos:]))
        self._regex = re.compile("^" + "".join(parts) + "$")

    @property
    def params(self) -> list[str]:
        return _PARAM.findall(self.pattern)

    def match(self, path: str) -> dict[str, str] | None:
        m = self._regex.match(path)
        return None if m is None else m.groupdict()


class AdminRoutes:
    """The admin route table; `version` changes on every add so /openapi.json can cache."""

    def __init__(self) -> None:
        self.routes: list[AdminRoute] = []
        self.version = 0

    def add(
        self,
        method: str,
        pattern: str,
        handler: Handler,
        *,
        write: bool | None = None,
        summary: str = "",
        responses: dict[str, Any] | None = None,
        request_body: dict[str, Any] | None = None,
        tag: str = "admin",
        auth: bool | None = None,
    ) -> None:
        """`auth=True` makes a read need the admin token too (what shows the configuration:
        topology and policies are an attacker's map); writes always need it."""
        method = method.upper()
        if write is None:
            write = method not in ("GET", "HEAD")
        if write and auth is False:
            raise ValueError(f"admin route {method} {pattern}: a write always needs the admin token")
        for r in self.routes:
            if r.method == method and r.pattern == pattern:
                raise ValueError(f"admin route {method} {pattern} already exists")
        self.routes.append(
            AdminRoute(method, pattern, handler, write=write, summary=summary, responses=responses,
                       request_body=request_body, tag=tag, auth=auth)
        )
        self.version += 1

    def resolve(self, method: str, path: str) -> tuple[AdminRoute, dict[str, str]] | AdminResponse:
        allowed: list[str] = []
        for r in self.routes:
            params = r.match(path)
            if params is None:
                continue
            if r.method == method or (method == "HEAD" and r.method == "GET"):
                return r, params
            allowed.append(r.method)
        if allowed:
            allow = ", ".join(sorted(set(allowed)))
            return error_response(405, "method_not_allowed", f"{method} is not allowed on {path}", [("Allow", allow)])
        return error_response(404, "not_found", f"no admin endpoint at {path}")


# `Authorization: <scheme> <credentials>` (RFC 9110 11.4), on the field's bytes: the scheme is a
# token, separated by spaces or tabs; the credentials are everything after, as bytes.
_CREDENTIALS = re.compile(rb"([!#$%&'*+.^_`|~0-9A-Za-z-]+)[ \t]+(.+)", re.DOTALL)


class AdminApp:
    """Dispatch: route resolution, the bearer-token check for writes, handler errors → JSON.

    The admin token, defined once: GATEWAY_ADMIN_TOKEN is text, taken as its UTF-8 bytes (the
    bytes of the environment variable itself: os.environ's undecodable bytes come back through
    surrogateescape). A write needs exactly one Authorization field whose scheme is `Bearer`
    (any case) and whose credentials, with surrounding spaces and tabs removed and nothing else
    (no Unicode separators: `tok\\xa0` is not `tok`), are byte for byte the token, compared with
    hmac.compare_digest. Equivalently, the header is read as UTF-8: a UTF-8 client sending the
    token matches, the same text in latin-1 does not. A repeated Authorization field is refused
    (which one counts would be ambiguous).
    """

    def __init__(self, routes: AdminRoutes, admin_token: str | None) -> None:
        self.routes = routes
        self._token = admin_token.encode("utf-8", "surrogateescape") if admin_token else None

    def authorize(self, req: AdminRequest, write: bool = True) -> AdminResponse | None:
        if self._token is None:
            if not write:
                return error_response(403, "read_only", f"{req.path} needs the admin token: "
                                      "GATEWAY_ADMIN_TOKEN is not set")
            return error_response(403, "read_only", "admin writes are disabled: GATEWAY_ADMIN_TOKEN is not set")
        values = req.header_values(b"authorization")
        m = _CREDENTIALS.fullmatch(values[0].strip(b" \t")) if len(values) == 1 else None
        # compare_digest: the time taken does not reveal how much of the token was right.
        if m is None or m.group(1).lower() != b"bearer" or not hmac.compare_digest(m.group(2), self._token):
            return error_response(401, "unauthorized", "a valid admin bearer token is required",
                                  [("WWW-Authenticate", 'Bearer realm="gateway-admin"')])
        return None

    def dispatch(self, req: AdminRequest) -> AdminResponse | Awaitable[AdminResponse]:
        """The response, or an awaitable of it when the handler waits on I/O (no task otherwise)."""
        found = self.routes.resolve(req.method, req.path)
        if isinstance(found, AdminResponse):
            return found
        route, req.params = found
        if route.auth:
            denied = self.authorize(req, route.write)
            if denied is not None:
                return denied
        try:
            result = route.handler(req)
        except Exception as exc:  # noqa: BLE001 - a handler bug answers 500, never kills the listener
            return self._failed(route, exc)
        if inspect.isawaitable(result):
            return self._wait(route, result)
        return result

    async def _wait(self, route: Any, pending: Awaitable[AdminResponse]) -> AdminResponse:
        try:
            return await pending
        except Exception as exc:  # noqa: BLE001
            return self._failed(route, exc)

    @staticmethod
    def _failed(route: Any, exc: Exception) -> AdminResponse:
        if isinstance(exc, AdminError):
            return error_response(exc.status, exc.code, exc.message, exc.headers)
        log.error("admin handler %s %s failed", route.method, route.pattern, exc_info=exc)
        return error_response(500, "internal_error", "the admin handler failed")

    async def handle(self, req: AdminRequest) -> AdminResponse:
        result = self.dispatch(req)
        return result if isinstance(result, AdminResponse) else await result


_REASONS = {200: "OK", 201: "Created", 202: "Accepted", 204: "No Content", 400: "Bad Request",
            401: "Unauthorized", 403: "Forbidden", 404: "Not Found", 405: "Method Not Allowed",
            408: "Request Timeout", 409: "Conflict", 413: "Content Too Large", 414: "URI Too Long",
            421: "Misdirected Request", 431: "Request Header Fields Too Large", 500: "Internal Server Error",
            501: "Not Implemented", 503: "Service Unavailable"}


def render(resp: AdminResponse, keep_alive: bool, head_only: bool = False) -> bytes:
    """The response on the wire, head and body in one buffer (head only for a HEAD request)."""
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


IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


class HostCheck:
    """Which `Host` values the admin API answers: the defence against DNS rebinding.

    A page on evil.example whose name is re-pointed at 127.0.0.1 talks to this listener from the
    victim's browser, but its requests carry `Host: evil.example`. So only these are answered:
    the address the connection came in on (the listener's bound address; for a wildcard bind,
    the local address of that connection, never 0.0.0.0 or ::), IPv6 in brackets, `localhost`,
    and the names in GATEWAY_ADMIN_HOSTS; case-insensitive, one trailing dot allowed, any port
    (or none). Anything else, and a missing Host on HTTP/1.1, gets 421 before any handler runs
    (a write is not executed). HTTP/1.0 may omit Host (no browser does). A target in absolute
    form (`GET http://host/...`) names a host too, and it must pass as well.
    """

    def __init__(self, extra_names: tuple[str, ...]) -> None:
        self.names = frozenset({"localhost"} | {n.lower().rstrip(".") for n in extra_names})

    def allows(self, value: bytes, local: frozenset[IPAddress]) -> bool:
        host = _host_part(value)
        if host is None:
            return False
        if host.rstrip(".") in self.names:
            return True
        try:
            ip = ipaddress.ip_address(host)
        except ValueError:
            return False
        return ip in local and not ip.is_unspecified


def _host_part(value: bytes) -> str | None:
    """The host of a Host value (`name`, `1.2.3.4`, `[v6]`, each with an optional `:port`)."""
    try:
        v = value.decode("ascii").lower()
    except UnicodeDecodeError:
        return None
    if v.startswith("["):
        end = v.find("]")
        host, rest = v[1:end], v[end + 1:]
        if end < 0 or ":" not in host:
            return None
    else:
        host, colon, port = v.partition(":")
        rest = colon + port
    if rest and not (rest[0] == ":" and (rest[1:] == "" or rest[1:].isdigit())):
        return None
    return host or None
