"""GATEWAY_WORKERS=N: N processes serve one port (SO_REUSEPORT); a killed worker is replaced."""
from __future__ import annotations

import http.client
import json
import os
import signal
import socket

import pytest

from tests.support.gateway_proc import (  # noqa: F401 - gateway, upstream are fixtures
    gateway,
    http_get,
    routes_toml,
    socket_owner,
    upstream,
    wait_until,
    worker_pids,
)


def test_two_workers_both_serve_one_port(gateway, upstream) -> None:  # noqa: F811
    gw = gateway(routes_toml(upstream.url, ["/"]), env={"GATEWAY_WORKERS": "2"})
    pids = wait_until(lambda: (p := worker_pids(gw.admin_port)) and len(p) == 2 and p)
    assert isinstance(pids, list)
    # Both workers must be listening before connections can spread over them.
    wait_until(lambda: "listening on" in gw.stderr and gw.stderr.count("worker: listening on") >= 2)
    seen: set[int] = set()
    for _ in range(40):
        conn = http.client.HTTPConnection("127.0.0.1", gw.port, timeout=10)
        status, _, body = http_get(gw.port, "/hello", conn=conn)
        assert status == 200, body
        owner = socket_owner(gw.port, conn.sock.getsockname()[1], pids)
        conn.close()
        assert owner in pids
        seen.add(owner)
        if len(seen) == 2:
            break
    # With 40 connections hashed over two reuseport sockets, missing one worker has p = 2^-39.
    assert seen == set(pids)
    assert gw.stop() == 0
    for pid in pids:
        assert not os.path.exists(f"/proc/{pid}") or "Z" in open(f"/proc/{pid}/stat").read().split()[2]


def test_a_killed_worker_is_replaced(gateway, upstream) -> None:  # noqa: F811
    gw = gateway(routes_toml(upstream.url, ["/"]), env={"GATEWAY_WORKERS": "2"})
    pids = wait_until(lambda: (p := worker_pids(gw.admin_port)) and len(p) == 2 and p)
    assert isinstance(pids, list)
    # Both workers must have started listening before one is killed: the port opens with the first
    # worker, and a victim killed before its own "listening" line would leave the count below short.
    wait_until(lambda: gw.stderr.count("worker: listening on") >= 2)
    victim = pids[0]
    os.kill(victim, signal.SIGKILL)
    new = wait_until(lambda: (p := worker_pids(gw.admin_port)) and len(p) == 2 and victim not in p and p)
    assert isinstance(new, list) and pids[1] in new
    gw.wait_stderr("killed by signal 9; replacing it")
    # The replacement serves: every one of a few connections gets an answer.
    wait_until(lambda: gw.stderr.count("worker: listening on") >= 3)
    for _ in range(10):
        status, _, _ = http_get(gw.port, "/after-crash")
        assert status == 200
    status, _, body = http_get(gw.admin_port, "/health")
    assert json.loads(body)["restarts"] == 1
    assert gw.stop() == 0


def test_sigint_to_the_supervisor_drains_workers_and_exits_0(gateway, upstream) -> None:  # noqa: F811
    gw = gateway(routes_toml(upstream.url, ["/"]), env={"GATEWAY_WORKERS": "2"})
    pids = wait_until(lambda: (p := worker_pids(gw.admin_port)) and len(p) == 2 and p)
    assert isinstance(pids, list)
    assert gw.stop(signal.SIGINT, timeout=20) == 0
    assert "all workers stopped" in gw.stderr
    assert "replacing" not in gw.stderr


def test_connection_cap_through_the_data_plane(gateway, upstream) -> None:  # noqa: F811
    gw = gateway(routes_toml(upstream.url, ["/"]), env={"GATEWAY_MAX_CONNECTIONS": "2"})
    c1 = http.client.HTTPConnection("127.0.0.1", gw.port, timeout=10)
    c2 = http.client.HTTPConnection("127.0.0.1", gw.port, timeout=10)
    assert http_get(gw.port, "/one", conn=c1)[0] == 200
    assert http_get(gw.port, "/two", conn=c2)[0] == 200
    # The third connection is not refused (it waits in the kernel backlog) ...
    c3 = socket.create_connection(("127.0.0.1", gw.port), timeout=10)
    c3.sendall(b"GET /three HTTP/1.1\r\nHost: x\r\n\r\n")
    c3.settimeout(0.7)
    # ... but it is not served while two connections are open.
    with pytest.raises(TimeoutError):
        c3.recv(1)
    assert http_get(gw.port, "/two-again", conn=c2)[0] == 200
    c1.close()
    c3.settimeout(5)
    assert c3.recv(12) == b"HTTP/1.1 200"
    c3.close()
    c2.close()
    assert gw.stop() == 0


def test_a_worker_replaced_while_the_file_is_broken_boots_the_last_valid_config(gateway, upstream) -> None:  # noqa: F811
    gw = gateway(routes_toml(upstream.url, ["/a"]), env={"GATEWAY_WORKERS": "2"})
    pids = wait_until(lambda: (p := worker_pids(gw.admin_port)) and len(p) == 2 and p)
    assert isinstance(pids, list)
    wait_until(lambda: gw.stderr.count("worker: listening on") >= 2)
    gw.write_config("[[routes]\nbroken = ")
    gw.reload()
    gw.wait_stderr("reload refused")   # once per node: the supervisor
    os.kill(pids[0], signal.SIGKILL)
    wait_until(lambda: gw.stderr.count("worker: listening on") >= 3)
    new = worker_pids(gw.admin_port)
    assert len(new) == 2 and pids[0] not in new
    # Every connection (whichever worker takes it) still serves the last valid config.
    for _ in range(20):
        assert http_get(gw.port, "/a")[0] == 200
    assert gw.stderr.count("replacing it") == 1, "the replacement must not crash-loop"
    assert gw.stop() == 0
