"""The segment-trie Router against the plain reference model (tests/support/router_reference.py) on
generated route tables and requests: host tiers, methods, trailing slashes, percent-encoded and odd
segments, targets that are not paths; that one route added or removed changes nothing for requests
it does not take; and that 10,000 routes build into a table whose size follows the routes."""
from __future__ import annotations

import random

from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.pipeline import LocalReply
from gateway.routing import Route, Router
from tests.support.router_reference import Outcome, reference, takes

# Segments chosen to collide: prefixes of each other, encodings of "/" and of letters, dot segments,
# empty segments (a "//" in a path), a non-ASCII byte, characters a router might treat specially.
SEGMENTS = ["a", "b", "ab", "a.b", "A", "", "%2F", "%2f", "%61", "a%20b", ".", "..", "~u", ";x",
            "*", ":id", "\xe9", "v1", "users"]
SEGMENT = st.sampled_from(SEGMENTS)
ROUTE_PATHS = st.builds(
    lambda segs, slash: "/" + "/".join(segs) + ("/" if slash and segs else ""),
    st.lists(SEGMENT, max_size=5), st.booleans())
METHODS = ["GET", "POST", "PUT", "DELETE"]
ROUTE_HOSTS = st.sampled_from([None, None, "a.example", "b.example", "[::1]"])
REQUEST_HOSTS = st.sampled_from(["a.example", "A.EXAMPLE:8080", "a.example.", "b.example", "c.example",
                                 "", "[::1]:443"])
# Request targets that are not "/…" paths still reach the router (e.g. "OPTIONS *").
ODD_TARGETS = ["", "*", "a/b", "//", "///a", "/%2F", "/a%2Fb"]
TAILS = ["", "/", "X", "/x", "/x/y", "//", "/.."]


def enc(s: str) -> bytes:
    return s.encode("latin-1")


@st.composite
def route_tables(draw: st.DrawFn, max_routes: int = 40) -> list[Route]:
    out = []
    for i in range(draw(st.integers(0, max_routes))):
        methods = draw(st.one_of(st.none(), st.lists(st.sampled_from(METHODS), min_size=1, max_size=3,
                                                     unique=True)))
        out.append(Route(f"r{i}", None, enc(draw(ROUTE_PATHS)), exact=draw(st.booleans()),
                         methods=methods, host=draw(ROUTE_HOSTS)))
    return out


@st.composite
def request_for(draw: st.DrawFn, rs: list[Route]) -> tuple[bytes, bytes, bytes]:
    """A request near the table: a route's own path with a tail, a fresh path, or an odd target."""
    kind = draw(st.integers(0, 3))
    if kind <= 1 and rs:
        path = draw(st.sampled_from(rs)).path + enc(draw(st.sampled_from(TAILS)))
    elif kind == 2:
        path = enc(draw(ROUTE_PATHS))
    else:
        path = enc(draw(st.sampled_from(ODD_TARGETS)))
    return enc(draw(st.sampled_from(METHODS))), enc(draw(REQUEST_HOSTS)), path


def actual(router: Router, method: bytes, host: bytes, path: bytes) -> Outcome:
    res = router.match(method, host, path)
    if isinstance(res, LocalReply):
        if res.status == 404:
            return ("reply", 404)
        assert res.headers[0][0] == b"Allow"
        return ("reply", (res.status, res.headers[0][1]))
    return ("route", res.name)


@settings(max_examples=250, deadline=None)
@given(st.data())
def test_trie_router_agrees_with_the_reference(data: st.DataObject) -> None:
    rs = data.draw(route_tables())
    router = Router(rs)
    for _ in range(12):
        req = data.draw(request_for(rs))
        assert actual(router, *req) == reference(rs, *req), (rs, req)


@settings(max_examples=150, deadline=None)
@given(st.data())
def test_a_route_added_or_removed_changes_nothing_for_requests_it_does_not_take(data: st.DataObject) -> None:
    rs = data.draw(route_tables())
    extra = data.draw(route_tables(max_routes=1).filter(bool))[0]
    extra = Route("extra", None, extra.path, exact=extra.exact, methods=extra.methods, host=extra.host)
    at = data.draw(st.integers(0, len(rs)))
    before, after = Router(rs), Router([*rs[:at], extra, *rs[at:]])   # a reload that adds `extra`
    for _ in range(12):
        req = data.draw(request_for([*rs, extra]))
        if not takes(extra, req[1], req[2]):
            assert actual(after, *req) == actual(before, *req), (rs, extra, req)


def test_exact_paths_of_every_length_through_the_exact_filter() -> None:
    """find() looks the exact-path dict up only when a 256-bit filter of the exact paths (length,
    last and middle byte) has the path's bit: exact paths of 1..200 bytes, and requests of every
    length up to 204 and the same with another last byte, against the reference."""
    lengths = [1, 2, 7, 62, 63, 64, 65, 127, 200]
    rs = [Route(f"e{n}", None, "/" + "x" * (n - 1), exact=True) for n in lengths]
    rs.append(Route("long-prefix", None, "/" + "x" * 70 + "/"))
    router = Router(rs)
    for n in range(1, 205):
        for path in (b"/" + b"x" * (n - 1), b"/" + b"x" * (n - 2) + b"y" if n > 1 else b"/"):
            req = (b"GET", b"a.example", path)
            assert actual(router, *req) == reference(rs, *req), req
    for n in lengths:
        got = router.match(b"GET", b"a.example", b"/" + b"x" * (n - 1))
        assert isinstance(got, Route) and got.name == f"e{n}"


def _big_table(n: int, seed: int = 14) -> list[Route]:
    """n routes shaped like a large platform's: most under /api/v1, some exact, some per host."""
    rnd = random.Random(seed)
    out = []
    for i in range(n):
        kind = rnd.random()
        if kind < 0.6:
            out.append(Route(f"p{i}", None, f"/api/v1/svc{i}" + ("/" if i % 3 == 0 else ""),
                             methods=rnd.choice([None, ["GET"], ["GET", "POST"]])))
        elif kind < 0.8:
            out.append(Route(f"e{i}", None, f"/api/v1/svc{i}/items/{i}", exact=True))
        else:
            out.append(Route(f"h{i}", None, f"/svc{i % 50}/x{i}", host=f"h{i % 40}.example"))
    out.append(Route("root", None, "/", methods=["GET"]))
    return out


def test_ten_thousand_routes_agree_with_the_reference_on_sampled_requests() -> None:
    rs = _big_table(10_000)
    router = Router(rs)
    rnd = random.Random(1)
    picks = [rs[0], rs[len(rs) // 2], rs[-2], *rnd.sample(rs, 60)]
    for r in picks:
        for tail in (b"", b"/", b"/42", b"X"):
            for method in (b"GET", b"POST", b"DELETE"):
                host = r.host or b"any.example"
                req = (method, host, r.path + tail)
                assert actual(router, *req) == reference(rs, *req), (r, req)
    # the route each pick was made for is the one it reaches (no other route shadows these shapes)
    for r in picks:
        got = router.match(next(iter(r.methods)) if r.methods else b"GET", r.host or b"x", r.path)
        assert isinstance(got, Route) and got.name == r.name


def test_trie_size_follows_the_distinct_prefixes_not_their_number_squared() -> None:
    rs = [Route(f"p{i}", None, f"/api/v1/svc{i}/") for i in range(10_000)]
    t = Router(rs)._default
    assert t.nodes == 1 + 2 + 10_000     # root, /api, /api/v1, one per svc
    assert Router(rs + [Route("deeper", None, "/api/v1/svc5/a/b")])._default.nodes == t.nodes + 2
