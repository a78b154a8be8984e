"""FilterChain: a route's filters, split by phase once at config load.

Only filters that override a phase are called in it, so a route with no policies costs three
empty-tuple checks per request. The chain is immutable and shared by every request of its route.
"""
from __future__ import annotations

import inspect
from collections.abc import Awaitable, Sequence
from typing import TYPE_CHECKING

from .filter import Filter

if TYPE_CHECKING:
    from .context import RequestContext
    from .reply import LocalReply


def _overrides(f: Filter, phase: str) -> bool:
    return getattr(type(f), phase) is not getattr(Filter, phase)


class FilterChain:
    __slots__ = ("filters", "_access", "_response", "_log")

    def __init__(self, filters: Sequence[Filter] = ()) -> None:
        self.filters = tuple(filters)
        # Access filters keep their chain index so the response phase can run exactly the filters
        # whose access phase ran (ctx.filters_ran counts chain positions, not access filters).
        self._access = tuple((i, f.access) for i, f in enumerate(self.filters) if _overrides(f, "access"))
        self._response = tuple((i, f.response) for i, f in enumerate(self.filters) if _overrides(f, "response"))
        self._log = tuple(f.log for f in self.filters if _overrides(f, "log"))

    @property
    def empty(self) -> bool:
        return not self.filters

    def run_access(self, ctx: RequestContext) -> LocalReply | None | Awaitable[LocalReply | None]:
        """Run the access phase; see Filter.access for the result."""
        ctx.filters_ran = len(self.filters) if not self._access else 0
        for pos, (i, access) in enumerate(self._access):
            result = access(ctx)
            ctx.filters_ran = i + 1
            if result is None:
                continue
            if inspect.isawaitable(result):
                return self._continue_async(ctx, result, pos)
            return result  # a LocalReply: the chain stops here
        ctx.filters_ran = len(self.filters)
        return None

    async def _continue_async(
        self, ctx: RequestContext, pending: Awaitable[LocalReply | None], pos: int
    ) -> LocalReply | None:
        result = await pending
        if result is not None:
            return result
        for i, access in self._access[pos + 1:]:
            step = access(ctx)
            ctx.filters_ran = i + 1
            reply = await step if inspect.isawaitable(step) else step
            if reply is not None:
                return reply
        ctx.filters_ran = len(self.filters)
        return None

    def run_response(self, ctx: RequestContext, status: int, headers: list[tuple[bytes, bytes]]) -> None:
        ran = ctx.filters_ran
        for i, response in reversed(self._response):
            if i < ran:
                response(ctx, status, headers)

    def run_log(self, ctx: RequestContext) -> None:
        for log in self._log:
            try:
                log(ctx)
            except Exception:  # noqa: BLE001 - a log filter must never break the connection
                import logging

                logging.getLogger("gateway.pipeline").exception("log filter failed")


EMPTY_CHAIN = FilterChain(())
