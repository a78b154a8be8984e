"""Request hygiene filters a route opts into (README "Request hygiene").

- `content_types = ["application/json", ...]`: a request that has a body (Content-Length > 0 or
  chunked) must declare one of these media types (parameters such as `; charset=utf-8` ignored,
  case-insensitive), else 415 before anything is forwarded. Requests without a body pass.
- `json_check = true` (+ `json_max_bytes`): a body with a JSON content type must parse (orjson),
  else 400; the data plane holds it up to the cap first (413 over it), then forwards it unchanged
  (JsonBodyCheck, a BodyCheck: see gateway/pipeline/filter.py).
- `security_headers = true`: responses (upstream or the gateway's own) get the headers an API
  should send to browsers, unless the upstream set them: X-Frame-Options: DENY,
  Content-Security-Policy: frame-ancestors 'none', Referrer-Policy: no-referrer,
  Cross-Origin-Resource-Policy: same-origin. (X-Content-Type-Options: nosniff is on every response.)
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import orjson

from gateway.http.head import all_values
from gateway.pipeline.filter import BodyCheck, Filter
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


def _is_json(media: bytes) -> bool:
    """application/json or a structured-syntax +json type (RFC 6839), already lowercased."""
    return media == b"application/json" or (media.startswith(b"application/") and media.endswith(b"+json"))


class JsonBodyCheck(BodyCheck):
    name = "json_check"

    def __init__(self, route: str, max_bytes: int) -> None:
        self.route = route
        self.max_bytes = max_bytes
        # close: the body is not read to its end (413), or the client may still be sending (400
        # decided at its last byte, before the parser saw the message end).
        self.refused_size = LocalReply(413, "payload_too_large",
                                       f"This route accepts JSON request bodies of at most {max_bytes} bytes.",
                                       close=True)
        self.refused_malformed = LocalReply(400, "malformed_json", "The request body is not well-formed JSON.",
                                            close=True)

    def begin(self, ctx: RequestContext) -> LocalReply | bool:
        if not ctx.chunked and not ctx.content_length:
            return False
        for name, value in ctx.headers:
            # Any JSON Content-Type field counts (two fields: the upstream may read either).
            if name == b"content-type" and _is_json(value.split(b";", 1)[0].strip().lower()):
                break
        else:
            return False
        if ctx.content_length is not None and ctx.content_length > self.max_bytes:
            return self.too_large(ctx)
        return True

    def too_large(self, ctx: RequestContext) -> LocalReply:
        self._audit(ctx, 413, "json_too_large")
        return self.refused_size

    def finish(self, ctx: RequestContext, body: bytes) -> LocalReply | None:
        if not body:
            return None          # an empty chunked body: nothing to parse, as Content-Length: 0
        try:
            orjson.loads(body)
        except orjson.JSONDecodeError:
            self._audit(ctx, 400, "malformed_json")
            return self.refused_malformed
        return None

    def _audit(self, ctx: RequestContext, status: int, reason: str) -> None:
        audit("request_rejected", request_id=ctx.request_id, client_ip=ctx.client_ip, consumer=ctx.consumer_id,
              route=self.route, status=status, reason=reason)


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
