"""Local replies on the wire: the SPEC §4 JSON error body and the canned replies of the data plane.

Every response the gateway makes itself is rendered here: `Content-Type: application/json`, the
body `{"error": code, "message": sentence, "request_id": id}`, `X-Request-Id` and
`X-Content-Type-Options: nosniff`, and a canonical `Content-Length`. A reply with `body` set (a
route fallback) is sent verbatim with its own content type.
"""
from __future__ import annotations

import orjson

from gateway.pipeline.context import RequestContext
from gateway.pipeline.reply import LocalReply

from .wire import status_line

_NOSNIFF = b"X-Content-Type-Options: nosniff\r\n"


def render(
    reply: LocalReply,
    request_id: bytes,
    keep_alive: bool,
    headers: list[tuple[bytes, bytes]] | None = None,
    head_only: bool = False,
) -> bytes:
    """Bytes of `reply` (head and body, one buffer for one write).

    headers: extra fields (reply headers plus what response filters added); defaults to reply's.
    head_only: a HEAD request gets the same head (with Content-Length) and no body.
    """
    if reply.body is not None:
        body = reply.body
        ctype = reply.content_type
    else:
        body = orjson.dumps(
            {"error": reply.code, "message": reply.message, "request_id": request_id.decode("latin-1")}
        )
        ctype = b"application/json"
    parts = [
        status_line(reply.status),
        b"Content-Type: ", ctype, b"\r\nContent-Length: %d\r\n" % len(body),
        b"X-Request-Id: ", request_id, b"\r\n", _NOSNIFF,
    ]
    for name, value in (reply.headers if headers is None else headers):
        parts += (name, b": ", value, b"\r\n")
    # The connection is closed after a reply that says so (framing errors, unread request bodies):
    # announcing it lets a well-behaved client stop pipelining onto a dead connection.
    parts.append(b"\r\n" if keep_alive and not reply.close else b"Connection: close\r\n\r\n")
    if not head_only:
        parts.append(body)
    return b"".join(parts)


def render_local_reply(reply: LocalReply, ctx_or_request_id: RequestContext | bytes, keep_alive: bool) -> bytes:
    """The seam named in the briefs: render `reply` for a request (its context) or a bare request id."""
    if isinstance(ctx_or_request_id, RequestContext):
        ctx = ctx_or_request_id
        extra = reply.headers + ctx.response_headers if ctx.response_headers else None
        return render(reply, ctx.request_id, keep_alive, extra, ctx.method == b"HEAD")
    return render(reply, ctx_or_request_id, keep_alive)


# --- canned replies of the data plane (immutable by convention: never mutate their headers) ---
def _c(status: int, code: str, message: str) -> LocalReply:
    return LocalReply(status, code, message, close=True)


BAD_REQUEST = _c(400, "bad_request", "The request is malformed.")
# RFC 6455 §4.2.1: a handshake the server will not complete gets an error status "such as 400".
UPGRADE_REFUSED = _c(400, "upgrade_not_allowed", "This route does not accept protocol upgrades (Upgrade).")
AMBIGUOUS_FRAMING = _c(400, "bad_request", "The request framing is ambiguous.")
BAD_HOST = _c(400, "bad_request", "The Host header is missing, repeated or invalid.")
BAD_TARGET = _c(400, "bad_request", "The request target is invalid.")
CHUNK_LINE_TOO_LONG = _c(400, "bad_request", "A chunk-size line of the request body is longer than allowed.")
HEADER_TIMEOUT = _c(408, "request_timeout", "The request head was not received in time.")
BODY_TIMEOUT = _c(408, "request_timeout", "The request body stalled.")
BODY_TOO_LARGE = _c(413, "payload_too_large", "The request body is larger than allowed.")
URI_TOO_LONG = _c(414, "uri_too_long", "The request target is longer than allowed.")
HEADERS_TOO_LARGE = _c(431, "request_header_fields_too_large", "The request head is larger than allowed.")
TE_NOT_IMPLEMENTED = _c(501, "not_implemented", "This Transfer-Encoding is not supported.")
VERSION_NOT_SUPPORTED = _c(505, "http_version_not_supported", "Only HTTP/1.0 and HTTP/1.1 are supported.")
# Without a route fallback, still says why (SPEC §4); a route with `fallback` answers before the
# pick with its own body (gateway/discovery/fallback.py).
NO_TARGET = LocalReply(503, "no_healthy_target", "No upstream target is available.",
                       [(b"X-Gateway-Fallback", b"no-healthy-target")])
UPSTREAM_CONNECT = LocalReply(502, "bad_gateway", "The upstream refused the connection.")
UPSTREAM_RESET = LocalReply(502, "bad_gateway", "The upstream closed the connection.")
UPSTREAM_PROTOCOL = LocalReply(502, "bad_gateway", "The upstream sent an invalid response.")
UPSTREAM_TIMEOUT = LocalReply(504, "gateway_timeout", "The upstream did not answer in time.")
SHUTTING_DOWN = LocalReply(503, "shutting_down", "The gateway is shutting down.", close=True)
INTERNAL_ERROR = _c(500, "internal_error", "The gateway failed to handle the request.")



def unavailable(ctx: RequestContext) -> LocalReply:
    """pick() found no target for ctx: its route's prepared reply (SPEC §4: the route's fallback
    or the 503 JSON, with X-Gateway-Fallback saying why: gateway/discovery/fallback.py), or
    NO_TARGET for a route built without one. Prepared at config load: it costs what a 404 does."""
    choose = getattr(ctx.route, "unavailable", None)
    return NO_TARGET if choose is None else choose(ctx)


UPSTREAM_REPLIES = {
    "connect": UPSTREAM_CONNECT,
    "reset": UPSTREAM_RESET,
    "protocol": UPSTREAM_PROTOCOL,
    "timeout": UPSTREAM_TIMEOUT,
}
