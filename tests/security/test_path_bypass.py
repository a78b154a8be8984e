"""Path normalization against routing bypasses: a route that refuses `/admin` (it needs a JWT with
the `admin` scope) next to a public `/` route. No spelling of /admin may reach the upstream
through the public route; each is either routed to /admin's rules (401) or refused (400).
Also: X-Real-IP / True-Client-IP / Forwarded from an untrusted client never reach the upstream."""
from __future__ import annotations

import http.client
import json
import socket
from collections.abc import Iterator
from typing import Any

import pytest

from gateway.http.wire import TargetError, normalize_target
from tests.security.tokens import SECRET
from tests.support.gateway_proc import GatewayProcess, UpstreamProcess


@pytest.mark.parametrize("raw,path", [
    (b"//admin", b"/admin"),
    (b"///admin//x", b"/admin/x"),
    (b"/admin;jsessionid=1", b"/admin"),
    (b"/public;x/../admin", b"/admin"),
    (b"/..;/admin", b"/admin"),
    (b"/public/..;x/admin", b"/admin"),
    (b"/%61dmin", b"/admin"),
    (b"/%41%44MIN", b"/ADMIN"),
    (b"/a%7eb%2dc", b"/a~b-c"),
    (b"/x%20y", b"/x%20y"),              # not unreserved: stays encoded (hex uppercased)
    (b"/x%3fy", b"/x%3Fy"),
    (b"/plain/path", b"/plain/path"),
])
def test_canonical_paths(raw: bytes, path: bytes) -> None:
    got, _, target, _ = normalize_target(raw + b"?q=%2F;//")
    assert got == path
    assert target == path + b"?q=%2F;//"          # the query is never touched


@pytest.mark.parametrize("raw", [b"/%2fadmin", b"/public/..%2Fadmin", b"/public/%2e%2e/admin", b"/x/%2E/admin",
                                 b"/public\\..\\admin", b"/public/%5c../admin", b"/a/%252e%252e/../b/%2F"])
def test_refused_paths(raw: bytes) -> None:
    with pytest.raises(TargetError):
        normalize_target(raw)


@pytest.fixture(scope="module")
def gw() -> Iterator[GatewayProcess]:
    up = UpstreamProcess()
    config = f"""
[[services]]
name = "up"
targets = [{{ url = "{up.url}" }}]
[[routes]]
name = "admin"
path = "/admin"
service = "up"
auth = ["jwt"]
scopes = ["admin"]
[[routes]]
name = "public"
path = "/"
service = "up"
"""
    g = GatewayProcess(config, env={"GATEWAY_JWT_SECRET": SECRET, "GATEWAY_AUDIT_LOG": "off"})
    try:
        yield g
    finally:
        g.kill()
        up.stop()


def raw_get(port: int, target: str, extra: str = "") -> tuple[int, Any]:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(f"GET {target} HTTP/1.1\r\nHost: x\r\n{extra}Connection: close\r\n\r\n".encode())
        r = http.client.HTTPResponse(s)
        r.begin()
        body = r.read()
    try:
        return r.status, json.loads(body)
    except ValueError:
        return r.status, body


BYPASSES = ["//admin", "/admin;x", "/admin;x/users", "/public;x/../admin", "/..;/admin", "/%61dmin",
            "/%61dmin/users", "/%2fadmin", "/public/..%2fadmin", "/public/%2e%2e/admin", "/public/../admin",
            "/./admin", "/public\\..\\admin", "//%61dmin;a=b//users", "/admin/./../admin/x",
            "http://x/admin", "http://x//admin"]


@pytest.mark.parametrize("target", BYPASSES)
def test_no_spelling_of_admin_reaches_the_upstream(gw: GatewayProcess, target: str) -> None:
    status, body = raw_get(gw.port, target)
    assert status in (400, 401), (target, status, body)
    if status == 200:   # (never: kept to show what leaked)
        pytest.fail(f"{target} reached the upstream as {body['target']}")


def test_public_route_still_works_and_forwards_the_canonical_path(gw: GatewayProcess) -> None:
    status, body = raw_get(gw.port, "//pub;v=1//a%7eb?x=1;2")
    assert status == 200
    assert body["target"] == "/pub/a~b?x=1;2"


def test_client_address_headers_from_an_untrusted_client_are_removed(gw: GatewayProcess) -> None:
    status, body = raw_get(gw.port, "/who", "X-Real-IP: 6.6.6.6\r\nTrue-Client-IP: 6.6.6.6\r\n"
                                            "Forwarded: for=6.6.6.6\r\nX-Forwarded-For: 6.6.6.6\r\n")
    assert status == 200
    sent = json.dumps(body["headers"])
    assert "6.6.6.6" not in sent
