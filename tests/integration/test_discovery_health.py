"""Active and passive health with real upstream processes that die (SIGKILL), hang, fail their
health check and come back, behind a real gateway with 2 workers and one checker per node."""
from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.gateway_proc import REPO, free_port, http_get, wait_until
from tests.support.gateway_proc import gateway as gateway  # noqa: F401 - the fixture

HELPER = REPO / "tests" / "support" / "health_upstream.py"


class Up:
    """One controllable upstream on a fixed port (so it can come back on the same address)."""

    def __init__(self, name: str, tmp: Path) -> None:
        self.name = name
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.modefile = tmp / f"{name}.mode"
        self.mode("ok")
        self.proc: subprocess.Popen[bytes] | None = None
        self.start()

    def start(self) -> None:
        self.proc = subprocess.Popen([sys.executable, str(HELPER), str(self.port), self.name, str(self.modefile)],
                                     stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL)
        assert self.proc.stdout is not None
        assert self.proc.stdout.readline().startswith(b"listening")

    def mode(self, m: str) -> None:
        self.modefile.write_text(m)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)
        if self.proc is not None and self.proc.stdout is not None:
            self.proc.stdout.close()


@pytest.fixture
def ups(tmp_path: Path) -> Iterator[list[Up]]:
    out = [Up(n, tmp_path) for n in ("a", "b", "c")]
    yield out
    for u in out:
        u.kill()


def config(ups: list[Up], health: bool = True, extra_route: str = "") -> str:
    targets = ", ".join(f'"{u.url}"' for u in ups)
    text = f'[[services]]\nname = "svc"\ntargets = [{targets}]\n'
    if health:
        text += ('[services.health]\npath = "/health"\ninterval = 0.3\ntimeout = 0.5\n'
                 'healthy_threshold = 2\nunhealthy_threshold = 2\nmax_backoff = 1.0\n')
    text += '[[routes]]\nname = "r"\npath = "/"\nservice = "svc"\n' + extra_route
    return text


def served(port: int, n: int = 30) -> list[str]:
    """Bodies (target names) of n requests on fresh connections (spread over both workers);
    a gateway error shows as 'status:NNN'."""
    out = []
    for _ in range(n):
        status, _, body = http_get(port, "/x", timeout=5)
        out.append(body.decode() if status == 200 else f"status:{status}")
    return out


def settles(port: int, predicate, timeout: float = 15.0) -> list[str]:  # type: ignore[no-untyped-def]
    """Wait until a whole batch of requests satisfies `predicate`; return that batch."""
    seen: list[list[str]] = []

    def ok() -> bool:
        batch = served(port)
        seen.append(batch)
        return bool(predicate(batch))

    wait_until(ok, timeout=timeout, interval=0.1)
    return seen[-1]


ENV = {"GATEWAY_WORKERS": "2", "GATEWAY_UPSTREAM_CONNECT_TIMEOUT": "1", "GATEWAY_UPSTREAM_TIMEOUT": "3"}


def test_active_checks_follow_death_failure_hang_and_recovery(gateway, ups: list[Up]) -> None:  # noqa: F811
    a, b, c = ups
    gw = gateway(config(ups), env=ENV)
    settles(gw.port, lambda batch: set(batch) == {"a", "b", "c"})

    # a dies (SIGKILL): it leaves rotation in both workers; after that, no request fails.
    a.kill()
    batch = settles(gw.port, lambda batch: set(batch) == {"b", "c"})
    assert batch and all(x in ("b", "c") for x in served(gw.port, 40))

    # a comes back on the same address: healthy_threshold probes later it serves again.
    a.start()
    settles(gw.port, lambda batch: set(batch) == {"a", "b", "c"})

    # b fails its health check while still answering traffic: only the checker can take it out.
    b.mode("fail")
    settles(gw.port, lambda batch: set(batch) == {"a", "c"})
    # c hangs on its health check (accepts, never answers): the probe's timeout takes it out.
    c.mode("hang")
    settles(gw.port, lambda batch: set(batch) == {"a"})
    assert "health: service svc target" in gw.wait_stderr("is DOWN")

    # A reload keeps the verdicts of the targets it keeps: b and c stay out right after it.
    gw.write_config(config(ups, extra_route='[[routes]]\nname = "r2"\npath = "/other"\nservice = "svc"\n'))
    gw.reload()
    gw.wait_stderr("reloaded")
    time.sleep(0.5)
    assert set(served(gw.port, 30)) == {"a"}

    # Both recover: back within healthy_threshold probes (max_backoff bounds how long a down
    # target waits for its next probe).
    b.mode("ok")
    c.mode("ok")
    settles(gw.port, lambda batch: set(batch) == {"a", "b", "c"}, timeout=20)
    assert gw.alive()


def test_passive_health_without_checks_takes_a_dead_target_out_of_every_worker(gateway, ups: list[Up]) -> None:  # noqa: F811
    a, b, c = ups
    gw = gateway(config(ups, health=False), env=ENV)
    settles(gw.port, lambda batch: set(batch) == {"a", "b", "c"})
    a.kill()
    # Each worker sees its own 5 consecutive connect errors (502s meanwhile), then stops sending.
    settles(gw.port, lambda batch: set(batch) == {"b", "c"})
    # (Not asserted further: 5 s later each worker sends it one trial request, which fails.)
    assert "consecutive failures (passive)" in gw.stderr
    # It comes back: after its 5 s out, a trial request succeeds and it rejoins.
    a.start()
    settles(gw.port, lambda batch: "a" in batch, timeout=20)


def test_every_target_down_answers_503_no_healthy_target(gateway, ups: list[Up]) -> None:  # noqa: F811
    fb = ('[[routes]]\nname = "fb"\npath = "/fb"\nservice = "svc"\n'
          'fallback = { status = 503, body = \'{"error":"svc_unavailable"}\', content_type = "application/json" }\n'
          '[[routes]]\nname = "fb2"\npath = "/fb2"\nservice = "svc"\n'
          'fallback = { status = 200, body = "cached page", content_type = "text/plain; charset=utf-8" }\n')
    gw = gateway(config(ups, extra_route=fb), env=ENV)
    assert http_get(gw.port, "/fb")[2] in (b"a", b"b", b"c")      # healthy: the fallback stays silent
    for u in ups:
        u.mode("fail")
    batch = settles(gw.port, lambda batch: set(batch) == {"status:503"})
    assert batch
    status, headers, body = http_get(gw.port, "/x")
    assert status == 503 and b"no_healthy_target" in body and b"request_id" in body
    assert headers["x-gateway-fallback"] == "no-healthy-target"
    status, headers, body = http_get(gw.port, "/fb")
    assert (status, body, headers["content-type"]) == (503, b'{"error":"svc_unavailable"}', "application/json")
    assert headers["x-gateway-fallback"] == "no-healthy-target" and headers["x-request-id"]
    status, headers, body = http_get(gw.port, "/fb2")
    assert (status, body, headers["content-type"]) == (200, b"cached page", "text/plain; charset=utf-8")
    for u in ups:
        u.mode("ok")
    settles(gw.port, lambda batch: set(batch) == {"a", "b", "c"})


def test_one_checker_per_node_not_one_per_worker(gateway, ups: list[Up]) -> None:  # noqa: F811
    a = ups[0]
    gw = gateway(config(ups), env=ENV)
    settles(gw.port, lambda batch: set(batch) == {"a", "b", "c"})
    hits = Path(str(a.modefile) + ".hits")
    before = len(hits.read_text()) if hits.exists() else 0
    time.sleep(3.0)
    probes = len(hits.read_text()) - before
    # interval 0.3 s ±20 %: one checker sends 8-13 probes in 3 s; one per worker would send twice that.
    assert 5 <= probes <= 14, probes


def test_the_lone_worker_is_its_own_checker(gateway, ups: list[Up]) -> None:  # noqa: F811
    a, b, c = ups
    gw = gateway(config(ups), env={**ENV, "GATEWAY_WORKERS": "1"})
    settles(gw.port, lambda batch: set(batch) == {"a", "b", "c"})
    b.mode("fail")
    settles(gw.port, lambda batch: set(batch) == {"a", "c"})
    b.mode("ok")
    settles(gw.port, lambda batch: set(batch) == {"a", "b", "c"})
