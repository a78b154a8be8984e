"""Fixtures for the Redis state layer: private servers this layer's tests may break on purpose."""
from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support.redis_server import RedisProcess


@pytest.fixture
def server() -> Iterator[RedisProcess]:
    """A redis-server of this test's own: kill it, pause it, restart it."""
    with RedisProcess() as s:
        yield s
