"""The test infrastructure itself: the private Redis starts and is ours; lint and types pass."""
from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys

import pytest
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
    # Two listeners of one gateway take two ports at once; a repeat makes them collide. Play a
    # generator that offers the same port again.
    from tests.support import gateway_proc

    base = gateway_proc.listen_ports()[0]
    offered = iter([base, base, base, base + 1])

    class Pick:
        def choice(self, ports: range) -> int:
            return next(offered)

    monkeypatch.setattr(gateway_proc, "_GIVEN", gateway_proc.collections.deque(maxlen=8))
    monkeypatch.setattr(gateway_proc, "_PICK", Pick())
    assert [gateway_proc.free_port(), gateway_proc.free_port()] == [base, base + 1]


def test_a_connections_time_wait_takes_an_ephemeral_port_from_a_listener() -> None:
    """The race a CI run lost ("cannot listen on 127.0.0.1:37999: address already in use"): a port
    handed out by bind-to-0 is an ephemeral one, a connect() may take it as its source port before
    the gateway binds it, and the TIME_WAIT its close leaves refuses the gateway's bind for 60 s,
    SO_REUSEADDR or not. Made to happen here: the connection's own source port is the one the
    gateway is then asked to listen on."""
    from gateway.worker import ListenError, bind_listener

    with socket.socket() as srv:
        srv.bind(("127.0.0.1", 0))
        srv.listen()
        client = socket.create_connection(srv.getsockname())
        taken = client.getsockname()[1]
        peer, _ = srv.accept()
        client.close()  # the client closes first: its side keeps the TIME_WAIT
        peer.close()
    with pytest.raises(ListenError, match="address already in use"):
        bind_listener("127.0.0.1", taken, reuse_port=False).close()


def test_free_ports_are_never_a_connections_source_port() -> None:
    """So free_port hands out ports from outside the kernel's ephemeral range, which is where every
    connect() takes its source port from (checked on 200 connections), and checks each is unbound."""
    from tests.support.gateway_proc import free_port, listen_ports

    low, high = map(int, open("/proc/sys/net/ipv4/ip_local_port_range").read().split())
    ours = listen_ports()
    assert not set(ours) & set(range(low, high + 1))
    given = [free_port() for _ in range(200)]
    assert len(set(given)) == 200 and all(p in ours for p in given)
    with socket.socket() as srv:
        srv.bind(("127.0.0.1", 0))
        srv.listen(256)
        sources = []
        for _ in range(200):
            c = socket.create_connection(srv.getsockname())
            sources.append(c.getsockname()[1])
            srv.accept()[0].close()
            c.close()
    assert all(low <= p <= high for p in sources) and not set(sources) & set(given)
    for port in given[:20]:  # and each is free to listen on
        with socket.socket() as s:
            s.bind(("127.0.0.1", port))
            s.listen()
