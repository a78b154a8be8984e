"""Signals as operators expect (issue 13.5) and reload visibility (issue 13.6), on the real command.

- SIGUSR1 reopens the log files (logrotate's rename-then-signal) in the supervisor and its workers
  and never stops anything; here the audit log, which the workers write (malformed requests) and
  the supervisor writes (admin changes);
- a second SIGTERM during a drain stops at once, cutting what is in flight;
- a refused reload is logged once per node at ERROR with the file and every reason, /ready keeps
  200 and reports last_reload, gateway_config_reloads_total counts it.
"""
from __future__ import annotations

import json
import os
import signal
import socket
import time

import pytest

from tests.support.gateway_proc import (  # noqa: F401 - gateway, upstream are fixtures
    gateway,
    http_get,
    routes_toml,
    upstream,
    wait_until,
)


def garbage(port: int) -> str:
    """A malformed request: the gateway answers 400 and audits it; returns the request id."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(b"NOT HTTP\r\n\r\n")
        data = b""
        while chunk := s.recv(4096):
            data += chunk
    assert data.startswith(b"HTTP/1.1 400"), data
    for line in data.split(b"\r\n"):
        if line.lower().startswith(b"x-request-id:"):
            return line.split(b":", 1)[1].strip().decode()
    raise AssertionError(data)


def audited(path, rid: str) -> bool:
    try:
        return any(json.loads(x).get("request_id") == rid for x in path.read_text().splitlines() if x.strip())
    except FileNotFoundError:
        return False


@pytest.mark.parametrize("workers", ["1", "2"])
def test_sigusr1_reopens_the_audit_log_moved_away_and_kills_nothing(gateway, upstream, tmp_path,  # noqa: F811
                                                                    workers: str) -> None:
    path = tmp_path / "audit.log"
    gw = gateway(routes_toml(upstream.url, ["/"]), env={"GATEWAY_WORKERS": workers, "GATEWAY_AUDIT_LOG": str(path)})
    if workers != "1":
        wait_until(lambda: gw.stderr.count("worker: listening on") >= int(workers))
    # Each worker writes its records: reach them all (connections spread over the workers).
    before = [garbage(gw.port) for _ in range(6)]
    wait_until(lambda: all(audited(path, rid) for rid in before))
    rotated = tmp_path / "audit.log.1"
    os.rename(path, rotated)
    gw.send_signal(signal.SIGUSR1)
    time.sleep(0.5)

    def fresh_file_gets_new_records() -> bool:
        rid = garbage(gw.port)
        return audited(path, rid)
    # Every worker moved to the fresh file: a run of new records all land there.
    wait_until(fresh_file_gets_new_records, timeout=10, interval=0.2)
    after = [garbage(gw.port) for _ in range(6)]
    wait_until(lambda: all(audited(path, rid) for rid in after))
    assert not any(audited(rotated, rid) for rid in after)
    assert all(audited(rotated, rid) for rid in before)
    assert gw.alive()
    assert http_get(gw.port, "/x")[0] == 200
    assert gw.stop() == 0


SLOW_UPSTREAM_TOML = """
[[services]]
name = "slow"
targets = [{{ url = "{url}" }}]

[[routes]]
name = "slow"
path = "/"
service = "slow"
timeout = 60
"""


@pytest.mark.parametrize("workers", ["1", "2"])
def test_a_second_sigterm_during_the_drain_stops_at_once(gateway, tmp_path, workers: str) -> None:  # noqa: F811
    # An upstream that accepts and never answers: the drain would wait GATEWAY_DRAIN_TIMEOUT (60 s).
    hang = socket.socket()
    hang.bind(("127.0.0.1", 0))
    hang.listen(16)
    url = f"http://127.0.0.1:{hang.getsockname()[1]}"
    gw = gateway(SLOW_UPSTREAM_TOML.format(url=url),
                 env={"GATEWAY_WORKERS": workers, "GATEWAY_DRAIN_TIMEOUT": "60"})
    if workers != "1":
        wait_until(lambda: gw.stderr.count("worker: listening on") >= int(workers))
    clients = []
    try:
        for _ in range(4):
            c = socket.create_connection(("127.0.0.1", gw.port), timeout=30)
            c.sendall(b"GET /wait HTTP/1.1\r\nHost: a\r\n\r\n")
            clients.append(c)
        time.sleep(0.5)                       # the requests are upstream, in flight
        gw.send_signal(signal.SIGTERM)
        gw.wait_stderr("draining", timeout=10)
        time.sleep(0.5)
        assert gw.alive(), "one SIGTERM drains: in-flight requests keep the process up"
        started = time.monotonic()
        gw.send_signal(signal.SIGTERM)
        assert gw.wait(timeout=10) == 0
        assert time.monotonic() - started < 5
        assert "second stop signal" in gw.stderr
        for c in clients:                     # the in-flight exchanges were cut
            c.settimeout(5)
            try:
                assert c.recv(4096) == b""
            except ConnectionResetError:
                pass
    finally:
        for c in clients:
            c.close()
        hang.close()


@pytest.mark.parametrize("workers", ["1", "2"])
def test_a_refused_reload_is_one_error_line_per_node_and_ready_reports_it(gateway, upstream,  # noqa: F811
                                                                         workers: str) -> None:
    gw = gateway(routes_toml(upstream.url, ["/a"]), env={"GATEWAY_WORKERS": workers,
                                                        "GATEWAY_METRICS_ALLOW": "127.0.0.0/8"})
    if workers != "1":
        wait_until(lambda: gw.stderr.count("worker: listening on") >= int(workers))
    status, _, body = http_get(gw.admin_port, "/ready")
    assert status == 200 and json.loads(body)["last_reload"] is None
    # Two problems in one file: both reasons on the one line.
    gw.write_config(routes_toml(upstream.url, ["/a"]) + '[[routes]]\nname = "x"\npath = "/x"\nservice = "missing"\n'
                    + '[[routes]]\nname = "y"\npath = "y"\nservice = "up"\n')
    gw.reload()
    gw.wait_stderr("reload refused")
    time.sleep(1.0)                           # every worker has handled its SIGHUP by now
    refused = [ln for ln in gw.stderr.splitlines() if "reload refused" in ln]
    assert len(refused) == 1, refused        # once per node, not once per worker
    assert " ERROR " in refused[0] and str(gw.config_path) in refused[0] and "2 problems" in refused[0], refused
    assert "routes[1].service" in refused[0] and "routes[2].path" in refused[0], refused
    status, _, body = http_get(gw.admin_port, "/ready")
    last = json.loads(body)["last_reload"]
    assert status == 200, body                # the old config serves: still ready
    assert last["ok"] is False and len(last["errors"]) == 2 and last["time"].endswith("Z"), last
    assert http_get(gw.port, "/a")[0] == 200
    # A good one: ok again, counted.
    gw.write_config(routes_toml(upstream.url, ["/a", "/b"]))
    gw.reload()
    wait_until(lambda: json.loads(http_get(gw.admin_port, "/ready")[2])["last_reload"]["ok"] is True)
    wait_until(lambda: http_get(gw.port, "/b")[0] == 200)
    metrics = http_get(gw.admin_port, "/metrics")[2].decode()
    assert 'gateway_config_reloads_total{result="ok"} 1.0' in metrics
    assert 'gateway_config_reloads_total{result="refused"} 1.0' in metrics
    assert gw.stop() == 0


@pytest.mark.parametrize("workers", ["1", "2"])
def test_sigquit_is_a_graceful_stop_as_nginx(gateway, workers: str) -> None:  # noqa: F811
    from tests.breakers.conftest import FaultUpstream

    fault = FaultUpstream()
    try:
        fault.mode("slow", 1500)
        gw = gateway(SLOW_UPSTREAM_TOML.format(url=fault.url), env={"GATEWAY_WORKERS": workers})
        if workers != "1":
            wait_until(lambda: gw.stderr.count("worker: listening on") >= int(workers))
        c = socket.create_connection(("127.0.0.1", gw.port), timeout=10)
        c.sendall(b"GET /slow HTTP/1.1\r\nHost: a\r\n\r\n")
        time.sleep(0.5)                   # in flight upstream
        gw.send_signal(signal.SIGQUIT)
        data = b""
        while chunk := c.recv(4096):
            data += chunk
        c.close()
        assert data.startswith(b"HTTP/1.1 200"), data       # the in-flight request completed
        assert b"connection: close" in data.lower()
        assert gw.wait(timeout=15) == 0
        assert "second stop signal" not in gw.stderr
    finally:
        fault._ctl.close()
        fault.stop()


def test_a_valid_file_a_worker_cannot_apply_makes_last_reload_say_so(gateway, upstream) -> None:  # noqa: F811
    # Node memory too small for the new config's metric cells: the file is valid (the supervisor
    # accepts it) but no worker can build its runtime; the node's last_reload must not say ok.
    gw = gateway(routes_toml(upstream.url, ["/a"]), env={"GATEWAY_WORKERS": "2", "GATEWAY_SHM_SIZE": "4m",
                                                        "GATEWAY_METRICS_ALLOW": "127.0.0.0/8"})
    wait_until(lambda: gw.stderr.count("worker: listening on") >= 2)
    gw.write_config(routes_toml(upstream.url, ["/a"] + [f"/r{i}" for i in range(1500)]))
    gw.reload()

    def last() -> dict:
        return json.loads(http_get(gw.admin_port, "/ready")[2])["last_reload"] or {}
    wait_until(lambda: last().get("ok") is False and len(last().get("errors", [])) == 2, timeout=20)
    errors = last()["errors"]
    assert {e.split(":")[0] for e in errors} == {"worker 0", "worker 1"}, errors
    assert all("GATEWAY_SHM_SIZE" in e for e in errors), errors
    metrics = http_get(gw.admin_port, "/metrics")[2].decode()
    assert 'gateway_config_reloads_total{result="ok"} 0.0' in metrics
    assert 'gateway_config_reloads_total{result="refused"} 1.0' in metrics
    assert http_get(gw.port, "/a")[0] == 200 and http_get(gw.port, "/r1")[0] == 404   # the old config serves
    assert gw.stop() == 0
