"""Errors of the data plane that carry the HTTP status they produce (the h11 habit).

They are raised only inside llhttp's callbacks (the protocols' methods, llhooks.pyx), to stop the
parser at the byte that crossed a limit; the protocol catches them right after the feed and renders
the reply. They never escape a protocol callback.
"""
from __future__ import annotations

from gateway.pipeline.reply import LocalReply


class RequestRejected(Exception):
    """Stop parsing: answer `reply` (always with close: the rest of the stream is not trusted)."""

    __slots__ = ("reply",)

    def __init__(self, reply: LocalReply) -> None:
        super().__init__(reply.code)
        self.reply = reply


class UpstreamError(Exception):
    """An exchange with an upstream failed; kind is connect | timeout | reset | protocol."""

    def __init__(self, kind: str) -> None:
        super().__init__(kind)
        self.kind = kind
