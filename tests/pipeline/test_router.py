"""Router tables: exact, prefix on segment boundaries, longest prefix, host tiers, methods, 405/404."""
from __future__ import annotations

import pytest

from gateway.config import loads_config
from gateway.pipeline import LocalReply
from gateway.routing import Route, Router, normalize_host

SVC = object()


def router(*routes: Route) -> Router:
    return Router(list(routes))


def R(name: str, path: str, **kw: object) -> Route:  # noqa: N802 - reads like a table row
    exact = path.startswith("=")
    return Route(name, SVC, path[1:] if exact else path, exact=exact, **kw)  # type: ignore[arg-type]


def name_of(result: Route | LocalReply) -> str | int:
    return result.name if isinstance(result, Route) else result.status


TABLE = router(
    R("users", "/api/users"),
    R("users-exact", "=/api/users/me"),
    R("api", "/api"),
    R("static", "/static/"),
    R("root-exact", "=/"),
    R("deep", "/api/users/admin/tools"),
)


@pytest.mark.parametrize(("path", "expected"), [
    (b"/api/users", "users"),
    (b"/api/users/", "users"),
    (b"/api/users/42", "users"),
    (b"/api/usersX", "api"),              # segment boundary: not "users"
    (b"/api/users/me", "users-exact"),    # exact beats any prefix
    (b"/api/users/me/x", "users"),        # exact is exact
    (b"/api/users/admin/tools/x", "deep"),  # longest prefix wins
    (b"/api/users/admin/toolsX", "users"),
    (b"/api", "api"),
    (b"/apix", 404),
    (b"/static/app.js", "static"),
    (b"/static", 404),                    # "/static/" needs the slash
    (b"/", "root-exact"),
    (b"/other", 404),
    (b"", 404),
])
def test_path_matching(path: bytes, expected: str | int) -> None:
    assert name_of(TABLE.match(b"GET", b"example.com", path)) == expected


def test_root_prefix_catches_everything_but_loses_to_longer() -> None:
    r = router(R("all", "/"), R("api", "/api"))
    assert name_of(r.match(b"GET", b"h", b"/anything/at/all")) == "all"
    assert name_of(r.match(b"GET", b"h", b"/api/x")) == "api"
    assert name_of(r.match(b"GET", b"h", b"/")) == "all"


def test_ties_go_by_declaration_order() -> None:
    r = router(R("first", "/a"), R("second", "/a"))
    assert name_of(r.match(b"GET", b"h", b"/a/b")) == "first"


def test_host_routes_are_tried_before_hostless_ones() -> None:
    r = router(
        R("any-api", "/api"),
        R("vhost-root", "/", host="api.example.com"),
        R("vhost-users", "/users", host="api.example.com"),
        R("other-host", "/api", host="other.example.com"),
    )
    assert name_of(r.match(b"GET", b"api.example.com", b"/api/x")) == "vhost-root"
    assert name_of(r.match(b"GET", b"api.example.com", b"/users/1")) == "vhost-users"
    assert name_of(r.match(b"GET", b"API.Example.COM:8443", b"/users")) == "vhost-users"
    assert name_of(r.match(b"GET", b"api.example.com.", b"/users")) == "vhost-users"
    assert name_of(r.match(b"GET", b"other.example.com", b"/api")) == "other-host"
    assert name_of(r.match(b"GET", b"other.example.com", b"/nope")) == 404
    assert name_of(r.match(b"GET", b"unknown.example", b"/api/x")) == "any-api"
    assert name_of(r.match(b"GET", b"", b"/api")) == "any-api"


def test_host_route_falls_through_to_hostless_when_its_paths_miss() -> None:
    r = router(R("vhost", "/v", host="a.example"), R("fallback", "/"))
    assert name_of(r.match(b"GET", b"a.example", b"/x")) == "fallback"


@pytest.mark.parametrize(("raw", "normal"), [
    (b"Example.COM", b"example.com"), (b"example.com:8080", b"example.com"),
    (b"[::1]:8080", b"[::1]"), (b"[::1]", b"[::1]"), (b"10.0.0.1:80", b"10.0.0.1"),
    (b"example.com.", b"example.com"), (b"", b""),
])
def test_normalize_host(raw: bytes, normal: bytes) -> None:
    assert normalize_host(raw) == normal


def test_methods_select_among_routes_of_the_same_path() -> None:
    r = router(
        R("read", "/items", methods=["GET", "HEAD"]),
        R("write", "/items", methods=["POST"]),
        R("fallback", "/", methods=["GET"]),
    )
    assert name_of(r.match(b"GET", b"h", b"/items/1")) == "read"
    assert name_of(r.match(b"POST", b"h", b"/items")) == "write"
    # DELETE: /items routes don't take it, neither does "/": 405 with the union, in priority order
    reply = r.match(b"DELETE", b"h", b"/items/1")
    assert isinstance(reply, LocalReply)
    assert (reply.status, reply.code) == (405, "method_not_allowed")
    assert reply.headers == [(b"Allow", b"GET, HEAD, POST")]


def test_method_mismatch_falls_through_to_a_shorter_prefix() -> None:
    r = router(R("users", "/api/users", methods=["GET"]), R("api", "/api"))
    assert name_of(r.match(b"POST", b"h", b"/api/users")) == "api"


def test_405_only_counts_routes_that_match_the_path() -> None:
    r = router(R("a", "/a", methods=["GET"]), R("b", "/b", methods=["PUT"]))
    reply = r.match(b"POST", b"h", b"/a/x")
    assert isinstance(reply, LocalReply) and reply.headers == [(b"Allow", b"GET")]
    assert name_of(r.match(b"POST", b"h", b"/c")) == 404


def test_405_includes_matching_host_and_hostless_routes() -> None:
    r = router(R("h", "/x", methods=["GET"], host="a.example"), R("any", "/x", methods=["PUT"]))
    reply = r.match(b"POST", b"a.example", b"/x")
    assert isinstance(reply, LocalReply) and reply.headers == [(b"Allow", b"GET, PUT")]
    # another host never sees a.example's routes
    reply = r.match(b"POST", b"b.example", b"/x")
    assert isinstance(reply, LocalReply) and reply.headers == [(b"Allow", b"PUT")]


def test_methods_are_case_normalized_and_allow_is_precomputed() -> None:
    route = R("r", "/", methods=["get", "Post", "GET"])
    assert route.methods == frozenset({b"GET", b"POST"})
    assert route.allow == b"GET, POST"
    assert route.allows(b"POST") and not route.allows(b"PUT")
    assert R("all", "/").allows(b"ANYTHING")


def test_404_reply_shape() -> None:
    reply = router().match(b"GET", b"h", b"/")
    assert isinstance(reply, LocalReply)
    assert (reply.status, reply.code, reply.headers, reply.close) == (404, "not_found", [], False)


@pytest.mark.parametrize(("route_path", "request_path", "upstream"), [
    ("/api/users", b"/api/users/42", b"/42"),
    ("/api/users", b"/api/users", b"/"),
    ("/api/users", b"/api/users/", b"/"),
    ("/api/users", b"/api/users?x=1", b"/?x=1"),
    ("/api/users", b"/api/users/a/b?x=1", b"/a/b?x=1"),
    ("/api/", b"/api/x", b"/x"),
    ("/api/", b"/api/", b"/"),
    ("/", b"/x/y", b"/x/y"),
    ("=/exact", b"/exact", b"/"),
    ("=/exact", b"/exact?q", b"/?q"),
])
def test_strip_prefix(route_path: str, request_path: bytes, upstream: bytes) -> None:
    assert R("r", route_path, strip_prefix=True).upstream_path(request_path) == upstream
    assert R("r", route_path).upstream_path(request_path) == request_path


def test_route_from_config_carries_everything() -> None:
    cfg = loads_config('''
[[services]]
name = "s"
targets = ["http://a:1"]
[[routes]]
name = "r"
path = "=/x"
methods = ["GET"]
host = "h.example"
service = "s"
strip_prefix = true
timeout = 2.5
''')
    route = Route.from_config(cfg.routes[0], SVC)
    assert (route.name, route.service, route.path, route.exact, route.host) == ("r", SVC, b"/x", True, b"h.example")
    assert (route.methods, route.allow, route.strip_prefix, route.timeout, route.retries) == (
        frozenset({b"GET"}), b"GET", True, 2.5, 0)
    assert route.chain.empty and route.config is cfg.routes[0]


def test_route_rejects_relative_path() -> None:
    with pytest.raises(ValueError):
        Route("r", SVC, "api")


def _fifty_routes() -> Router:
    routes = [R(f"svc{i}", f"/svc{i}/v1/items", methods=["GET", "POST"]) for i in range(40)]
    routes += [R(f"exact{i}", f"=/exact/{i}") for i in range(5)]
    routes += [R(f"host{i}", f"/h{i}", host=f"h{i}.example") for i in range(4)]
    routes.append(R("root", "/", methods=["GET"]))
    return Router(routes)


def test_fifty_routes_all_reachable() -> None:
    r = _fifty_routes()
    for i in range(40):
        assert name_of(r.match(b"GET", b"x", f"/svc{i}/v1/items/{i}".encode())) == f"svc{i}"
    for i in range(5):
        assert name_of(r.match(b"GET", b"x", f"/exact/{i}".encode())) == f"exact{i}"
    assert name_of(r.match(b"GET", b"h3.example:80", b"/h3/z")) == "host3"
    assert name_of(r.match(b"DELETE", b"x", b"/svc7/v1/items")) == 405


def test_match_speed_with_fifty_routes(benchmark) -> None:  # type: ignore[no-untyped-def]
    r = _fifty_routes()
    result = benchmark(r.match, b"GET", b"api.example.com", b"/svc37/v1/items/12345")
    assert name_of(result) == "svc37"


def test_host_cache_stays_bounded_and_correct() -> None:
    r = router(R("vhost", "/", host="a.example"), R("any", "/"))
    for i in range(Router.HOST_CACHE_SIZE * 3):
        assert name_of(r.match(b"GET", f"junk{i}.example".encode(), b"/")) == "any"
        assert len(r._host_cache) <= Router.HOST_CACHE_SIZE
    assert name_of(r.match(b"GET", b"A.example:80", b"/")) == "vhost"
    assert name_of(r.match(b"GET", b"A.example:80", b"/")) == "vhost"   # now from the cache
