"""The admin API's vocabulary: requests, responses, errors and the route table.

Its own module so that imports point one way: the listener (server.py) and the OpenAPI generator
(openapi.py) both build on these types, and neither imports the other's internals.
"""
from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from typing import Any

import orjson


class AdminRequest:
    """One admin request.

    headers:     lowercased names; values decoded latin-1 (lossless, for display and plain ASCII
                 values); a repeated field keeps its last value.
    raw_headers: every field as received, (lowercased name, value bytes), repeats included.
                 Credentials are compared on these bytes, never on a decoded str. When not given
                 (tests, internal callers), built from `headers`, whose str values are then taken
                 as text and encoded UTF-8 (what a UTF-8 client would have sent).
    """

    __slots__ = ("method", "path", "query", "headers", "body", "params", "raw_headers")

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
    __slots__ = ("method", "pattern", "handler", "write", "summary", "responses", "request_body", "tag", "_regex")

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
    ) -> None:
        self.method = method
        self.pattern = pattern
        self.handler = handler
        self.write = write
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
    ) -> None:
        method = method.upper()
        if write is None:
            write = method not in ("GET", "HEAD")
        for r in self.routes:
            if r.method == method and r.pattern == pattern:
                raise ValueError(f"admin route {method} {pattern} already exists")
        self.routes.append(
            AdminRoute(method, pattern, handler, write=write, summary=summary, responses=responses,
                       request_body=request_body, tag=tag)
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
