"""Request hygiene filters a route opts into (README "Request hygiene").

- `content_types = ["application/json", ...]`: a request that has a body (Content-Length > 0 or
  chunked) must declare one of these media types (parameters such as `; charset=utf-8` ignored,
  case-insensitive), else 415 before anything is forwarded. Requests without a body pass.
- `security_headers = true`: responses (upstream or the gateway's own) get the headers an API
  should send to browsers, unless the upstream set them: X-Frame-Options: DENY,
  Content-Security-Policy: frame-ancestors 'none', Referrer-Policy: no-referrer,
  Cross-Origin-Resource-Policy: same-origin. (X-Content-Type-Options: nosniff is on every response.)
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from gateway.http.head import all_values
from gateway.pipeline.filter import Filter
from gateway.pipeline.reply import LocalReply

from .audit import audit

if TYPE_CHECKING:
    from gateway.pipeline.context import RequestContext


class ContentTypeFilter(Filter):
    name = "content_types"

    def __init__(self, route: str, allowed: tuple[str, ...]) -> None:
        self.route = route
        self.allowed = frozenset(t.encode() for t in allowed)
        self.refused = LocalReply(415, "unsupported_media_type",
                                  f"This route accepts {', '.join(allowed)} request bodies.")

    def access(self, ctx: RequestContext) -> LocalReply | None:
        if not ctx.chunked and not ctx.content_length:
            return None
        values = all_values(ctx.headers, b"content-type")
        # two Content-Type fields: ambiguous, refused
        ctype = (values[0] if len(values) == 1 else b"") if values else None
        if ctype:
            media = ctype.split(b";", 1)[0].strip().lower()
            if media in self.allowed:
                return None
        audit("request_rejected", request_id=ctx.request_id, client_ip=ctx.client_ip, consumer=ctx.consumer_id,
              route=self.route, status=415, reason="content_type")
        return self.refused


SECURITY_HEADERS = (
    (b"X-Frame-Options", b"DENY"),
    (b"Content-Security-Policy", b"frame-ancestors 'none'"),
    (b"Referrer-Policy", b"no-referrer"),
    (b"Cross-Origin-Resource-Policy", b"same-origin"),
)
_NAMES = frozenset(n.lower() for n, _ in SECURITY_HEADERS)


class SecurityHeadersFilter(Filter):
    name = "security_headers"

    def response(self, ctx: RequestContext, status: int, headers: list[tuple[bytes, bytes]]) -> None:
        present = {n.lower() for n, _ in headers if n.lower() in _NAMES}
        if not present:
            headers.extend(SECURITY_HEADERS)
        else:
            headers.extend(h for h in SECURITY_HEADERS if h[0].lower() not in present)
