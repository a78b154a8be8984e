"""Fixtures of the state layer's tests: NodeMemory on a private and on a named segment, and
private redis-servers these tests may break on purpose."""
from __future__ import annotations

from collections.abc import Iterator

import pytest

from gateway.state.memory import NodeMemory
from tests.support.node_memory import Make, MiB, unique_name, unlink_shm
from tests.support.redis_server import RedisProcess


@pytest.fixture(params=["private", "named"])
def make(request: pytest.FixtureRequest) -> Iterator[Make]:
    """make(size, **kw) -> a NodeMemory on a private (anonymous) or a named segment."""
    names: list[str] = []

    def factory(size: int = 4 * MiB, **kw: object) -> NodeMemory:
        if request.param == "private":
            return NodeMemory.private(size, **kw)  # type: ignore[arg-type]
        names.append(unique_name())
        return NodeMemory.create(size, names[-1], **kw)  # type: ignore[arg-type]

    yield factory
    for name in names:
        unlink_shm(name)


@pytest.fixture
def named() -> Iterator[NodeMemory]:
    """A NodeMemory on a named segment, as the supervisor creates it."""
    name = unique_name()
    mem = NodeMemory.create(4 * MiB, name)
    yield mem
    unlink_shm(name)


@pytest.fixture
def server() -> Iterator[RedisProcess]:
    """A redis-server of this test's own: kill it, pause it, restart it."""
    with RedisProcess() as s:
        yield s
