"""strip_prefix on the wire: the request line the data plane sends upstream (stripped in C by
request.pyx) is Route.upstream_path's answer for every shape of route and target, and a route of
another class is still asked its own upstream_path()."""
from __future__ import annotations

import pytest

from gateway.routing import Route
from tests.http.harness import OK, Harness

CASES = [
    ("/api/users", [b"/api/users/42", b"/api/users", b"/api/users/", b"/api/users?x=1", b"/api/users/a/b?x=1"]),
    ("/api/", [b"/api/x", b"/api/", b"/api/?q=1", b"/api/x/y/"]),
    ("/", [b"/x/y", b"/", b"/?a=b"]),
    ("=/exact", [b"/exact", b"/exact?q"]),
    ("/a", [b"/a", b"/a/", b"/a?", b"/a/b"]),
]


def _sent_target(h: Harness, path: bytes) -> bytes:
    h.feed(b"GET " + path + b" HTTP/1.1\r\nHost: h\r\n\r\n")
    line = h.upstream_bytes().split(b"\r\n", 1)[0]
    h.respond(OK)
    up = h.up().transport
    up.written.clear()  # type: ignore[union-attr]
    return line.split(b" ")[1]


@pytest.mark.parametrize(("route_path", "paths"), CASES)
@pytest.mark.parametrize("strip", [True, False])
def test_upstream_target_is_route_upstream_path(route_path: str, paths: list[bytes], strip: bool) -> None:
    route = Route("r", None, route_path.lstrip("="), exact=route_path.startswith("="), strip_prefix=strip)
    h = Harness(routes=[route])
    route.service = h.service   # (the harness makes the service; the router reads no other field)
    try:
        for path in paths:
            assert _sent_target(h, path) == route.upstream_path(path), path
    finally:
        h.close()


class RewritingRoute(Route):
    """A route class of a plugin's own: its upstream_path is asked, never bypassed."""

    def upstream_path(self, path: bytes) -> bytes:
        return b"/rewritten" + path


def test_route_subclass_is_asked_its_upstream_path() -> None:
    route = RewritingRoute("r", None, "/api", strip_prefix=True)
    h = Harness(routes=[route])
    route.service = h.service
    try:
        assert _sent_target(h, b"/api/x?y=1") == b"/rewritten/api/x?y=1"
    finally:
        h.close()
