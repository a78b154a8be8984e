"""Issue 7 section A: memory and time stay bounded whatever a peer does (fake transports, no sockets).

Each test plays one hostile or unlucky peer deterministically: the race or the hostile byte
pattern is made to happen by the test, never left to timing.
"""
from __future__ import annotations

from gateway.http import request, upstream
from tests.http.harness import Harness, status_of

GET = b"GET /x HTTP/1.1\r\nHost: a\r\n\r\n"


# --- A8: header-name caches keep only short names --------------------------------------------
def test_header_name_caches_keep_only_short_names() -> None:
    h = Harness(max_header_bytes=65536)
    names = [b"X-%d-" % i + b"n" * 15000 for i in range(3)]
    h.feed(b"GET /x HTTP/1.1\r\nHost: a\r\n" + b"".join(n + b": v\r\n" for n in names) + b"\r\n")
    h.respond(b"HTTP/1.1 200 OK\r\n" + b"".join(n + b": v\r\n" for n in names) + b"Content-Length: 0\r\n\r\n")
    assert status_of(h.down.take()) == 200
    assert max(len(n) for n in request._name_cache) <= 64
    assert upstream._cached_name_max() <= 64
    h.close()
