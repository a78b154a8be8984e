"""Test-only identity: sets ctx.consumer_id / consumer_org from X-Test-User / X-Test-Org.

Stands in for the auth filters (JWT, API keys) in tests of identity-keyed limits and quotas,
which read identity only from those context fields. Installed on every route only when the
internal variable _GATEWAY_TEST_IDENTITY is set (gateway/runtime.py); never in production.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from gateway.pipeline.filter import Filter

if TYPE_CHECKING:
    from gateway.pipeline.context import RequestContext
    from gateway.pipeline.reply import LocalReply


class TestIdentityFilter(Filter):
    name = "test_identity"
    __test__ = False            # not a pytest test class

    def access(self, ctx: RequestContext) -> LocalReply | None:
        for n, v in ctx.headers:
            if n == b"x-test-user":
                ctx.consumer_id = v.decode("latin-1")
                ctx.auth_method = "test"
            elif n == b"x-test-org":
                ctx.consumer_org = v.decode("latin-1")
        return None
