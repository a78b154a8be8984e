"""Suite-wide fixtures. Layer-specific fixtures live in each tests/<layer>/conftest.py."""
from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support.redis_server import private_redis


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    """URL of this session's own redis-server (started on a free port; fails loudly if it can't)."""
    with private_redis() as url:
        yield url
