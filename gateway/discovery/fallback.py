"""What a route answers when its service has no target to use (SPEC §4, issue 9).

pick() returns None when every target is out: its circuit refused it (open, or half-open with
its probes taken), or it is unavailable (health). The data plane then asks the route's
`unavailable(ctx)` (gateway/http/replies.py::unavailable) for the reply, which is prepared here
once per route at config load: the route's `fallback` (status, body and content type as
configured) or SPEC §4's 503 JSON, each with `X-Gateway-Fallback` saying why. Choosing between
the two prepared replies is one attribute read, so a fallback costs what a router 404 costs.

Why it says circuit-open: the breaker's admission (breakers.py) leaves ctx.breaker_ticket at -1
when it refused a candidate of this pick and no later candidate was admitted; otherwise no target
was available at all (no-healthy-target).
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..pipeline.reply import LocalReply

if TYPE_CHECKING:
    from ..config.model import FallbackConfig

HEADER = b"X-Gateway-Fallback"
CIRCUIT_OPEN = b"circuit-open"
NO_HEALTHY_TARGET = b"no-healthy-target"


def prepared(fallback: FallbackConfig | None, code: str, message: str, why: bytes) -> LocalReply:
    headers = [(HEADER, why)]
    if fallback is None:
        return LocalReply(503, code, message, headers)
    # A configured body is sent verbatim; without one the reply is the JSON error body with the
    # configured status (render() builds it, since it carries the request id).
    return LocalReply(fallback.status, code, message, headers, body=fallback.body,
                      content_type=fallback.content_type.encode("latin-1"))


class Unavailable:
    """A route's two prepared replies; called with the request's context (see the module doc)."""

    __slots__ = ("circuit_open", "no_target")

    def __init__(self, fallback: FallbackConfig | None = None) -> None:
        self.circuit_open = prepared(fallback, "circuit_open",
                                     "The upstream service is unavailable (circuit open).", CIRCUIT_OPEN)
        self.no_target = prepared(fallback, "no_healthy_target", "No upstream target is available.",
                                  NO_HEALTHY_TARGET)

    def __call__(self, ctx: Any) -> LocalReply:
        return self.circuit_open if ctx.breaker_ticket < 0 else self.no_target
