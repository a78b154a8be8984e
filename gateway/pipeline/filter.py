"""The Filter interface (Envoy/Kong style phases).

access   in chain order, before the proxy step. Returns None to continue, a LocalReply to answer
         locally (the chain stops), or an awaitable resolving to either when it must wait on I/O.
         A filter that answers from memory must stay synchronous: a request whose filters are all
         synchronous creates no task or coroutine.
response in reverse order, only for filters whose access phase ran, when the response head is
         known (upstream or local). May append to `headers` (downstream response headers).
log      always, after the downstream has the last byte (or the exchange failed). Must not raise.

A subclass overrides only the phases it needs; FilterChain calls only overridden phases.
"""
from __future__ import annotations

from collections.abc import Awaitable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .context import RequestContext
    from .reply import LocalReply


class Filter:
    name = "filter"

    def access(self, ctx: RequestContext) -> LocalReply | None | Awaitable[LocalReply | None]:
        return None

    def response(self, ctx: RequestContext, status: int, headers: list[tuple[bytes, bytes]]) -> None:
        return None

    def log(self, ctx: RequestContext) -> None:
        return None


class BodyCheck:
    """A route policy that needs the whole request body before anything goes upstream (the JSON
    check, gateway/security/hygiene.py). Not a Filter: the chain carries it (FilterChain.body_check)
    and the data plane holds the body for it (gateway/http/exchange.pyx, `_hold`), bounded by
    `max_bytes`, after the access filters admitted the request. Every method is synchronous.

    begin(ctx)        False: nothing to check for this request (no body, another content type);
                      True: hold the body; a LocalReply: refuse now (a Content-Length over the cap).
    too_large(ctx)    the reply when a body being held crosses max_bytes (413).
    finish(ctx, body) the whole body (chunked framing removed): None forwards it unchanged, a
                      LocalReply refuses it.
    """

    max_bytes = 0

    def begin(self, ctx: RequestContext) -> LocalReply | bool:
        return False

    def too_large(self, ctx: RequestContext) -> LocalReply:
        raise NotImplementedError

    def finish(self, ctx: RequestContext, body: bytes) -> LocalReply | None:
        return None
