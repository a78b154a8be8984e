"""A second attempt over real sockets (issue 7 C2, route `retries`): the real gateway process in
front of an upstream that closes every pooled connection as the next request is written
(tests/support/closing_upstream.py), and of a target that refuses connections."""
from __future__ import annotations

import http.client
import subprocess
import sys
from collections.abc import Iterator

import pytest

from tests.support.gateway_proc import (  # noqa: F401 - gateway is a fixture
    REPO,
    UpstreamProcess,
    free_port,
    gateway,
)


class Closing:
    def __init__(self, *args: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, str(REPO / "tests" / "support" / "closing_upstream.py"), "--port", "0", *args],
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        assert line.startswith("listening "), line
        self.url = "http://" + line.split()[1]

    def stop(self) -> None:
        self.proc.kill()
        self.proc.wait(10)
        assert self.proc.stdout is not None
        self.proc.stdout.close()


@pytest.fixture(params=["eof", "rst"])
def closing(request: pytest.FixtureRequest) -> Iterator[Closing]:
    up = Closing(*(["--rst"] if request.param == "rst" else []))
    yield up
    up.stop()


def config(urls: list[str], retries: int = 0) -> str:
    targets = ", ".join(f'{{ url = "{u}" }}' for u in urls)
    return (f'[[services]]\nname = "up"\ntargets = [{targets}]\n'
            f'[[routes]]\nname = "root"\npath = "/"\nservice = "up"\nretries = {retries}\n')


def ask(port: int, method: str = "GET", body: bytes | None = None) -> tuple[int, bytes]:
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        c.request(method, "/x", body=body)
        r = c.getresponse()
        return r.status, r.read()
    finally:
        c.close()


def test_a_pooled_connection_closed_as_the_request_is_written_is_sent_again(gateway, closing) -> None:  # noqa: F811
    gw = gateway(config([closing.url]), env={"GATEWAY_WORKERS": "1"})
    seen = []
    for i in range(6):
        method, body = ("POST", b"body-%d" % i) if i % 2 else ("GET", None)
        status, data = ask(gw.port, method, body)
        assert status == 200, (i, data)
        assert data.endswith(b"%s %s" % (method.encode(), body or b"")), data
        seen.append(data.split()[0])
    # every request after the first met a pooled connection the upstream closed on it, and was
    # answered on a fresh one: six connections, one request each
    assert len(set(seen)) == 6


def test_retries_go_to_another_target_for_idempotent_methods_only(gateway) -> None:  # noqa: F811
    up = UpstreamProcess()
    dead = f"http://127.0.0.1:{free_port()}"   # connection refused
    try:
        gw = gateway(config([dead, up.url], retries=1), env={"GATEWAY_WORKERS": "1"})
        # Round robin alternates: every other request picks the dead target first. POSTs first:
        # three of them meet the refusal and are never retried (3 failures stay under passive
        # health's 5, so the dead target is still in rotation for the GETs that follow).
        posts = [ask(gw.port, "POST", b"x")[0] for _ in range(6)]
        assert sorted(set(posts)) == [200, 502] and posts.count(502) == 3
        assert [ask(gw.port)[0] for _ in range(6)] == [200] * 6
    finally:
        up.stop()
