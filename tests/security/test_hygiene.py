"""Route hygiene options through a real gateway: `content_types` (415 before forwarding) and
`security_headers` (on upstream answers and on the gateway's own 401s); config errors name the path."""
from __future__ import annotations

import http.client
import json
from collections.abc import Iterator
from typing import Any

import pytest

from gateway.config import loads_config
from gateway.config.errors import ConfigErrors
from tests.security.tokens import SECRET
from tests.support.gateway_proc import GatewayProcess, UpstreamProcess


@pytest.fixture(scope="module")
def gw() -> Iterator[GatewayProcess]:
    up = UpstreamProcess()
    config = f"""
[[services]]
name = "up"
targets = [{{ url = "{up.url}" }}]
[[routes]]
name = "json-only"
path = "/json"
service = "up"
content_types = ["application/json"]
security_headers = true
[[routes]]
name = "private"
path = "/private"
service = "up"
auth = ["jwt"]
security_headers = true
[[routes]]
name = "open"
path = "/"
service = "up"
"""
    g = GatewayProcess(config, env={"GATEWAY_JWT_SECRET": SECRET, "GATEWAY_AUDIT_LOG": "off"})
    try:
        yield g
    finally:
        g.kill()
        up.stop()


def send(port: int, method: str, path: str, body: bytes | None, headers: dict[str, str]) -> tuple[int, dict[str, str], Any]:
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        c.request(method, path, body=body, headers=headers)
        r = c.getresponse()
        data = r.read()
        return r.status, {k.lower(): v for k, v in r.getheaders()}, json.loads(data) if data else None
    finally:
        c.close()


def total(port: int) -> int:
    return int(send(port, "GET", "/count", None, {})[2]["total"])


@pytest.mark.parametrize("ctype,status", [
    ("application/json", 200), ("Application/JSON; charset=utf-8", 200),
    ("text/plain", 415), ("application/json-patch+json", 415), (None, 415),
])
def test_content_types(gw: GatewayProcess, ctype: str | None, status: int) -> None:
    before = total(gw.port)
    headers = {"Content-Type": ctype} if ctype else {}
    got, hdrs, body = send(gw.port, "POST", "/json/x", b'{"a": 1}', headers)
    assert got == status, body
    assert total(gw.port) == before + (2 if status == 200 else 1)
    if status == 415:
        assert body["error"] == "unsupported_media_type"
    assert hdrs["x-frame-options"] == "DENY" and hdrs["referrer-policy"] == "no-referrer"


def test_bodyless_requests_need_no_content_type(gw: GatewayProcess) -> None:
    assert send(gw.port, "GET", "/json/x", None, {})[0] == 200


def test_security_headers_on_local_replies_and_not_elsewhere(gw: GatewayProcess) -> None:
    status, hdrs, _ = send(gw.port, "GET", "/private", None, {})
    assert status == 401
    assert hdrs["content-security-policy"] == "frame-ancestors 'none'"
    assert hdrs["cross-origin-resource-policy"] == "same-origin"
    status, hdrs, _ = send(gw.port, "GET", "/other", None, {})
    assert status == 200 and "x-frame-options" not in hdrs


@pytest.mark.parametrize("line,problem", [
    ('content_types = []', "routes[0].content_types: expected a non-empty array"),
    ('content_types = ["json"]', "routes[0].content_types[0]: expected a media type"),
    ('security_headers = "yes"', "routes[0].security_headers: expected true or false"),
])
def test_bad_hygiene_config(line: str, problem: str) -> None:
    text = ('[[services]]\nname = "s"\ntargets = ["http://127.0.0.1:1"]\n'
            f'[[routes]]\nname = "r"\npath = "/"\nservice = "s"\n{line}\n')
    with pytest.raises(ConfigErrors) as exc:
        loads_config(text)
    assert any(p.startswith(problem) for p in exc.value.problems), exc.value.problems
