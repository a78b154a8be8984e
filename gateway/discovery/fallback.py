"""A route's `fallback` when no target of its service is healthy: the configured status, body and
content type with `X-Gateway-Fallback: no-healthy-target` (SPEC §4).

A Filter, last in the route's chain (after auth and limits: a request they refuse is refused
whatever the targets' health). It answers only when every target is out of rotation (health
checks or passive health); a pick that then fails because every breaker refused is the breaker
feature's `circuit-open` case. Synchronous and allocation-free while a target is up: one pass over
the target list that stops at the first available one.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..pipeline.filter import Filter
from ..pipeline.reply import LocalReply

if TYPE_CHECKING:
    from ..config.model import FallbackConfig

HEADER = (b"X-Gateway-Fallback", b"no-healthy-target")


def fallback_reply(fb: FallbackConfig, reason: bytes = b"no-healthy-target") -> LocalReply:
    return LocalReply(fb.status, "no_healthy_target", "No upstream target is available.",
                      [(b"X-Gateway-Fallback", reason)],
                      body=fb.body.encode() if fb.body is not None else None,
                      content_type=fb.content_type.encode("latin-1"))


class NoHealthyTargetFallback(Filter):
    name = "fallback"

    def __init__(self, fb: FallbackConfig) -> None:
        self.reply = fallback_reply(fb)

    def access(self, ctx: Any) -> LocalReply | None:
        service = ctx.service
        if service is None:
            return None
        for t in service.targets:
            if t.available:
                return None
        return self.reply
