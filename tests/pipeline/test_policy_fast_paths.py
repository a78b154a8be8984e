"""The compiled hot paths of the policies (filters/ratelimit_fast.pyx, security/auth_fast.pyx)
against the Python code they stand for: twin filters, one answering through its bound compiled
`access`, the other through `python_access`, must give the same replies, headers, identity and
counters for the same requests."""
from __future__ import annotations

import time

import jwt
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.config.env import load_settings
from gateway.config.model import RateLimitConfig
from gateway.filters.ratelimit import build_filter
from gateway.filters.ratelimit_fast import FastAccess
from gateway.http.head import HeaderView, view_of_request_head
from gateway.pipeline.chain import FilterChain
from gateway.pipeline.context import RequestContext
from gateway.security.auth_fast import CachedJwtAccess, token_key
from gateway.security.auth_filter import AuthFilter
from gateway.security.context import SecurityContext

SECRET = "fast-path-secret-0123456789abcdef0123456789"


class Clock:
    def __init__(self) -> None:
        self.now = 500.0

    def __call__(self) -> float:
        return self.now


def request(ip: str, user: str | None, hval: bytes | None) -> RequestContext:
    c = RequestContext()
    c.client_ip = ip
    c.consumer_id = user
    c.request_id = b"req"
    c.headers = [(b"x-tenant", hval)] if hval is not None else []
    return c


def answer(reply: object) -> object:
    return None if reply is None else (reply.status, reply.code, reply.message, reply.headers)  # type: ignore[attr-defined]


POLICIES = (RateLimitConfig("ip", 3, 1.0), RateLimitConfig("user", 5, 2.0, "token_bucket", 2),
            RateLimitConfig("header:X-Tenant", 4, 1.0), RateLimitConfig("route", 9, 1.0))


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["10.0.0.1", "10.0.0.2"]), st.sampled_from([None, "ann", "bo\u00e9"]),
                          st.sampled_from([None, b"a", b"\xe9"]), st.sampled_from([0.0, 0.05, 0.4, 1.5])),
                min_size=1, max_size=40))
def test_compiled_rate_limit_answers_as_the_python_code(steps: list) -> None:  # type: ignore[type-arg]
    c1, c2 = Clock(), Clock()
    fast = build_filter("r", POLICIES, None, 100, None, clock=c1)
    slow = build_filter("r", POLICIES, None, 100, None, clock=c2)
    assert fast is not None and slow is not None and isinstance(fast.access, FastAccess)
    for ip, user, hval, dt in steps:
        c1.now += dt
        c2.now += dt
        a, b = request(ip, user, hval), request(ip, user, hval)
        assert answer(fast.access(a)) == answer(slow.python_access(b))
        assert a.response_headers == b.response_headers
    assert fast.counters.values() == slow.counters.values()


def test_the_chain_calls_the_compiled_access_and_counts_filters_ran() -> None:
    f = build_filter("r", (RateLimitConfig("ip", 1, 60.0),), None, 100, None, clock=Clock())
    chain = FilterChain([f])  # type: ignore[list-item]
    c = request("10.0.0.9", None, None)
    assert chain.run_access(c) is None and c.filters_ran == 1
    assert dict(c.response_headers)[b"RateLimit-Remaining"] == b"0"
    c = request("10.0.0.9", None, None)
    reply = chain.run_access(c)
    assert reply is not None and reply.status == 429 and c.filters_ran == 1   # type: ignore[union-attr]


def token(scope: str, exp: float | None = None) -> bytes:
    claims = {"sub": "ann", "org": "acme", "scope": scope, "exp": int(exp or time.time() + 600)}
    return jwt.encode(claims, SECRET, algorithm="HS256").encode()


def auth_ctx(headers: list[tuple[bytes, bytes]]) -> RequestContext:
    c = RequestContext()
    c.client_ip = "10.0.0.1"
    c.request_id = b"req"
    c.headers = headers
    return c


def identity(c: RequestContext) -> tuple:  # type: ignore[type-arg]
    return (c.consumer_id, c.consumer_org, c.scopes, c.auth_method, c.upstream_headers)


def test_compiled_jwt_cache_hit_sets_what_the_python_code_sets() -> None:
    sec = SecurityContext(load_settings({"GATEWAY_JWT_SECRET": SECRET, "GATEWAY_AUDIT_LOG": "off"}))
    f = AuthFilter("r", ("jwt", "api_key"), ("read",), sec)
    assert isinstance(f.access, CachedJwtAccess)
    good, weak = token("read write"), token("write")
    cases = [
        [(b"authorization", b"Bearer " + good)],
        [(b"authorization", b"BEARER \t" + good + b" \r")],        # scheme case, whitespace
        [(b"authorization", b"Bearer " + weak)],                   # 403: scope missing
        [(b"authorization", b"Bearer " + good), (b"authorization", b"Bearer " + good)],  # two: 401
        [(b"authorization", b"Bearer " + good), (b"x-api-key", b"k1"), (b"x-api-key", b"k2")],
        [(b"authorization", b"Basic abc")],
        [(b"authorization", b"Bearer")],
        [],
    ]
    for headers in cases:
        for as_view in (False, True):         # a list of pairs, and the data plane's HeaderView
            if as_view and any(b"\r" in v for _, v in headers):
                continue                      # (not a value a head can carry)
            for _ in range(2):                # the first sight fills the cache, the second hits it
                a, b = auth_ctx(list(headers)), auth_ctx(list(headers))
                if as_view:
                    a.headers = view_of(headers)
                ra, rb = f.access(a), f.python_access(b)
                assert ra is rb, headers
                assert identity(a) == identity(b), headers
    assert len(sec.cache) == 2


def view_of(headers: list[tuple[bytes, bytes]], added: list[tuple[bytes, bytes]] | None = None) -> HeaderView:
    """The HeaderView the data plane gives a request with these fields (and filters' additions)."""
    head = b"GET / HTTP/1.1\r\nHost: a\r\n" + b"".join(n + b": " + v + b"\r\n" for n, v in headers) + b"\r\n"
    view = view_of_request_head(head)
    if added:
        view.added = list(added)
    return view


def test_compiled_jwt_cache_hit_counts_filters_additions() -> None:
    """Fields a filter added before the auth filter count like the head's (a second
    Authorization field: 401), in the compiled path as in the Python one."""
    sec = SecurityContext(load_settings({"GATEWAY_JWT_SECRET": SECRET, "GATEWAY_AUDIT_LOG": "off"}))
    f = AuthFilter("r", ("jwt",), (), sec)
    good = token("read")
    f.python_access(auth_ctx([(b"authorization", b"Bearer " + good)]))      # cached
    for added in ([(b"authorization", b"Bearer " + good)], [(b"x-other", b"1")]):
        a, b = auth_ctx([]), auth_ctx([])
        a.headers = view_of([(b"authorization", b"Bearer " + good)], added)
        b.headers = view_of([(b"authorization", b"Bearer " + good)], added)
        ra, rb = f.access(a), f.python_access(b)
        assert answer(ra) == answer(rb) and identity(a) == identity(b), added


def test_a_scope_granted_on_one_route_is_checked_again_on_another() -> None:
    """The compiled hit remembers the last route scopes a cached identity satisfied
    (CachedIdentity.granted): a route asking for other scopes must still refuse."""
    sec = SecurityContext(load_settings({"GATEWAY_JWT_SECRET": SECRET, "GATEWAY_AUDIT_LOG": "off"}))
    reader = AuthFilter("r", ("jwt",), ("read",), sec)
    writer = AuthFilter("w", ("jwt",), ("write",), sec)
    t = token("read")
    for f, status in ((reader, None), (reader, None), (writer, 403), (reader, None), (writer, 403)):
        c = auth_ctx([(b"authorization", b"Bearer " + t)])
        reply = f.access(c)
        assert (None if reply is None else reply.status) == status      # type: ignore[attr-defined]


def test_an_expired_cached_token_is_checked_again() -> None:
    sec = SecurityContext(load_settings({"GATEWAY_JWT_SECRET": SECRET, "GATEWAY_AUDIT_LOG": "off"}))
    f = AuthFilter("r", ("jwt",), (), sec)
    t = token("read")
    assert f.access(auth_ctx([(b"authorization", b"Bearer " + t)])) is None
    ident = sec.cached(t)
    assert ident is not None
    ident.until = time.time() - 1     # past exp + leeway: the hit must not be trusted
    c = auth_ctx([(b"authorization", b"Bearer " + t)])
    assert f.access(c) is None and c.consumer_id == "ann"
    ident = sec.cached(t)
    assert ident is not None and ident.until > time.time()  # verified again and cached anew


def test_a_token_ending_like_a_cached_one_is_verified_not_served_from_the_cache() -> None:
    """The cache is keyed by a token's last bytes (auth_fast.pyx, KEY_BYTES); a hit needs the whole
    token. A forged token that ends with a cached token's signature gets no identity, in the
    compiled path or the Python one, and leaves the cached one as it was."""
    sec = SecurityContext(load_settings({"GATEWAY_JWT_SECRET": SECRET, "GATEWAY_AUDIT_LOG": "off"}))
    f = AuthFilter("r", ("jwt",), (), sec)
    good = token("read")
    assert f.access(auth_ctx([(b"authorization", b"Bearer " + good)])) is None
    head, claims, sig = good.split(b".")
    forged = jwt.encode({"sub": "eve", "org": "acme", "exp": int(time.time() + 600)}, "other-secret-" + SECRET,
                        algorithm="HS256").encode()
    forged = b".".join(forged.split(b".")[:2] + [sig])     # eve's claims, ann's signature
    assert token_key(forged) == token_key(good) and forged != good
    for access in (f.access, f.python_access):
        c = auth_ctx([(b"authorization", b"Bearer " + forged)])
        reply = access(c)
        assert reply is not None and reply.status == 401 and c.consumer_id is None  # type: ignore[attr-defined]
    ident = sec.cached(good)
    assert ident is not None and ident.sub == "ann" and len(sec.cache) == 1
    assert sec.cached(good[:10]) is None


def test_the_cache_key_is_the_tokens_last_bytes() -> None:
    assert token_key(b"abcdefghij") == int.from_bytes(b"cdefghij", "little")
    assert token_key(b"xyz") == int.from_bytes(b"xyz", "little")   # shorter than the key
    assert token_key(b"") == 0
