"""Property test: the compiled Router agrees with a plain, obviously-correct model of the rules
(routing.py's docstring) on random route tables and requests."""
from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.pipeline import LocalReply
from gateway.routing import Route, Router
from tests.support.router_reference import reference as model  # the one plain model of the rules

SEGMENTS = st.sampled_from(["a", "b", "ab", "ba", "x"])
PATHS = st.builds(
    lambda segs, slash: "/" + "/".join(segs) + ("/" if slash and segs else ""),
    st.lists(SEGMENTS, max_size=4), st.booleans(),
)
METHODS = st.sampled_from(["GET", "POST", "PUT"])
HOSTS = st.sampled_from([None, "a.example", "b.example"])


@st.composite
def routes(draw: st.DrawFn) -> list[Route]:
    out = []
    for i in range(draw(st.integers(0, 12))):
        methods = draw(st.one_of(st.none(), st.lists(METHODS, min_size=1, max_size=2, unique=True)))
        out.append(Route(f"r{i}", None, draw(PATHS), exact=draw(st.booleans()), methods=methods,
                         host=draw(HOSTS)))
    return out


def actual(router: Router, method: bytes, host: bytes, path: bytes) -> tuple[str, object]:
    res = router.match(method, host, path)
    if isinstance(res, LocalReply):
        if res.status == 404:
            return ("reply", 404)
        assert res.headers[0][0] == b"Allow"
        return ("reply", (res.status, res.headers[0][1]))
    return ("route", res.name)


@settings(max_examples=400, deadline=None)
@given(routes(), st.lists(st.tuples(METHODS, st.sampled_from(["a.example", "B.example:8080", "c.example", ""]), PATHS),
                          min_size=1, max_size=8))
def test_router_agrees_with_model(rs: list[Route], requests: list[tuple[str, str, str]]) -> None:
    router = Router(rs)
    for m, h, p in requests:
        args = (m.encode(), h.encode(), p.encode())
        assert actual(router, *args) == model(rs, *args), (rs, args)
