"""The node's shared-memory segment across the gateway's life: created by the supervisor before
its workers, mapped by them, gone after a clean stop, and removed by the next start after a crash
(a restarted node never maps a dead instance's memory)."""
from __future__ import annotations

import json
import os
import signal

from tests.support.gateway_proc import (  # noqa: F401 - gateway, upstream are fixtures
    gateway,
    http_get,
    routes_toml,
    upstream,
    wait_until,
)


def state(admin_port: int) -> dict:
    status, _, body = http_get(admin_port, "/health")
    assert status == 200
    return dict(json.loads(body)["state"])


def segment_path(name: str) -> str:
    return os.path.join("/dev/shm", name)


def maps_segment(pid: int, name: str) -> bool:
    try:
        with open(f"/proc/{pid}/maps") as f:
            return name in f.read()
    except OSError:
        return False


def test_workers_map_the_supervisor_s_segment_and_a_clean_stop_removes_it(gateway, upstream) -> None:  # noqa: F811
    gw = gateway(routes_toml(upstream.url, ["/"]), env={"GATEWAY_WORKERS": "2", "GATEWAY_SHM_SIZE": "8m"})
    name = state(gw.admin_port)["memory"]["segment"]
    assert name.startswith("gateway-state-") and os.path.exists(segment_path(name))
    pids = wait_until(lambda: (p := json.loads(http_get(gw.admin_port, "/health")[2])["workers"]) and len(p) == 2 and p)
    wait_until(lambda: all(maps_segment(pid, name) for pid in pids))
    assert gw.stop() == 0
    assert not os.path.exists(segment_path(name))


def test_a_crashed_node_s_segment_is_removed_by_the_next_start(gateway, upstream) -> None:  # noqa: F811
    env = {"GATEWAY_WORKERS": "2", "GATEWAY_SHM_SIZE": "8m"}
    first = gateway(routes_toml(upstream.url, ["/"]), env=env)
    dead = state(first.admin_port)["memory"]["segment"]
    workers = json.loads(http_get(first.admin_port, "/health")[2])["workers"]
    os.kill(first.pid, signal.SIGKILL)          # no clean-up runs; the workers die with it (PDEATHSIG)
    first.proc.wait(10)
    wait_until(lambda: not any(os.path.exists(f"/proc/{p}") and "Z" not in open(f"/proc/{p}/stat").read().split()[2]
                               for p in workers))
    assert os.path.exists(segment_path(dead))   # left behind by the crash
    second = gateway(routes_toml(upstream.url, ["/"]), env=env)
    fresh = state(second.admin_port)["memory"]["segment"]
    assert fresh != dead and os.path.exists(segment_path(fresh))
    assert not os.path.exists(segment_path(dead))
    assert "left by dead instances" in second.stderr
    assert second.stop() == 0


def test_one_worker_runs_on_private_memory(gateway, upstream) -> None:  # noqa: F811
    gw = gateway(routes_toml(upstream.url, ["/"]), env={"GATEWAY_SHM_SIZE": "4m"})
    mem = state(gw.admin_port)["memory"]
    assert mem["segment"] is None and mem["total"] > 0
    assert gw.stop() == 0
