"""The test infrastructure itself: the private Redis starts and is ours; lint and types pass."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys

import redis

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_private_redis_is_isolated(redis_url: str) -> None:
    if os.environ.get("GATEWAY_TEST_REDIS_URL"):
        assert redis_url == os.environ["GATEWAY_TEST_REDIS_URL"]
    else:
        assert not redis_url.startswith("redis://127.0.0.1:6379"), "must not use the shared Redis"
    r = redis.Redis.from_url(redis_url)
    r.set("gw:test:probe", b"1")
    assert r.get("gw:test:probe") == b"1"
    r.delete("gw:test:probe")


def test_ruff_clean() -> None:
    ruff = shutil.which("ruff")
    assert ruff, "ruff is a test dependency (pip install -e '.[test]')"
    out = subprocess.run([ruff, "check", "gateway", "tests", "bench"], cwd=ROOT,
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr


def test_mypy_clean() -> None:
    out = subprocess.run([sys.executable, "-m", "mypy", "--no-error-summary"], cwd=ROOT,
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr


def test_free_port_never_hands_out_the_same_port_twice(monkeypatch) -> None:
    # The OS may return the port it returned a moment ago (seen: 2 back-to-back repeats in
    # 20,000); two listeners of one gateway then collide. Play that OS.
    from tests.support import gateway_proc

    offered = iter([40001, 40001, 40001, 40002])

    class OS:
        def __init__(self, *a: object) -> None:
            self.port = 0

        def __enter__(self) -> OS:
            return self

        def __exit__(self, *exc: object) -> None:
            pass

        def bind(self, addr: tuple[str, int]) -> None:
            self.port = next(offered)

        def getsockname(self) -> tuple[str, int]:
            return ("127.0.0.1", self.port)

    monkeypatch.setattr(gateway_proc, "_GIVEN", gateway_proc.collections.deque(maxlen=8))
    monkeypatch.setattr(gateway_proc.socket, "socket", OS)
    assert [gateway_proc.free_port(), gateway_proc.free_port()] == [40001, 40002]
