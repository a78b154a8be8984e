"""JwtChecker and the JWKS source, without a gateway: the reason of every refusal, the cache,
JWKS rotation, the kid flood and a failing endpoint (a real local HTTP server)."""
from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import jwt
import pytest

from gateway.config.env import load_settings
from gateway.pipeline.context import RequestContext
from gateway.security.auth_filter import AuthFilter
from gateway.security.context import MAX_CACHED, SecurityContext, build_checker, failure_index
from gateway.security.jwks import JwksKeys, parse_jwks
from gateway.security.jwt_check import JwtRefused
from tests.security import test_jwt_gateway as attacks
from tests.security.test_jwt_gateway import RS
from tests.security.tokens import SECRET, claims, raw_token, rsa_keypair

EXPECTED = {
    "alg none": "malformed", "alg None spelled": "malformed",
    "HS256 signed with the RSA public key (confusion)": "bad_signature",
    "HS256 with a guessed secret": "bad_signature", "crit header": "malformed", "embedded jku": "malformed",
    "embedded jwk": "malformed", "embedded x5u": "malformed", "over 8 KiB": "malformed",
    "exp a string": "bad_claims", "nbf a string": "bad_claims", "exp a boolean": "bad_claims",
    "exp beyond 2^53": "bad_claims", "duplicate claim keys": "malformed", "duplicate header keys": "malformed",
    "malformed base64 (padding)": "malformed", "malformed base64 (alphabet)": "malformed",
    "two segments": "malformed", "expired": "expired", "not yet valid": "not_yet_valid",
    "iat in the future": "not_yet_valid", "no exp": "bad_claims", "no sub": "bad_claims",
    "sub a number": "bad_claims", "jti a number": "bad_claims", "tampered payload": "bad_signature",
    "signature of another key": "bad_signature", "claims not an object": "malformed", "NaN exp": "malformed",
}


@pytest.fixture
def rs_checker(tmp_path: Path) -> Any:
    (tmp_path / "p.pem").write_bytes(attacks.PEM)
    checker, _ = build_checker(load_settings({"GATEWAY_JWT_PUBLIC_KEY": str(tmp_path / "p.pem"),
                                              "GATEWAY_JWT_LEEWAY": "5"}))
    return checker


@pytest.mark.parametrize("label,make", attacks.ATTACKS, ids=[a[0] for a in attacks.ATTACKS])
def test_refusal_reason(rs_checker: Any, label: str, make: Any) -> None:
    with pytest.raises(JwtRefused) as exc:
        rs_checker.verify(make().encode(), time.time())
    assert exc.value.reason == EXPECTED[label]


def test_every_attack_has_an_expected_reason() -> None:
    assert {a[0] for a in attacks.ATTACKS} == set(EXPECTED)


def test_algorithms_come_from_the_key_not_the_token(rs_checker: Any) -> None:
    assert rs_checker.algorithms == frozenset({"RS256", "RS384", "RS512", "PS256", "PS384", "PS512"})
    hs, _ = build_checker(load_settings({"GATEWAY_JWT_SECRET": SECRET}))
    assert hs.algorithms == frozenset({"HS256", "HS384", "HS512"})
    only, _ = build_checker(load_settings({"GATEWAY_JWT_SECRET": SECRET, "GATEWAY_JWT_ALGORITHMS": "HS512"}))
    tok = jwt.encode(claims(), SECRET, algorithm="HS256").encode()
    with pytest.raises(JwtRefused):
        only.verify(tok, time.time())
    assert only.verify(jwt.encode(claims(), SECRET, algorithm="HS512").encode(), time.time()).sub == "alice"


def test_issuer_audience_and_scopes(tmp_path: Path) -> None:
    c, _ = build_checker(load_settings({"GATEWAY_JWT_SECRET": SECRET, "GATEWAY_JWT_ISSUER": "https://idp",
                                        "GATEWAY_JWT_AUDIENCE": "gw", "GATEWAY_JWT_ORG_CLAIM": "tenant"}))
    now = time.time()
    good = jwt.encode(claims(iss="https://idp", aud=["x", "gw"], tenant="t1", scope=None, scp=["a", "b"]),
                      SECRET, algorithm="HS256").encode()
    got = c.verify(good, now)
    assert (got.org, got.scopes) == ("t1", frozenset({"a", "b"}))
    for bad in (claims(iss="https://other", aud="gw"), claims(iss="https://idp", aud="other"), claims(aud="gw")):
        with pytest.raises(JwtRefused) as exc:
            c.verify(jwt.encode(bad, SECRET, algorithm="HS256").encode(), now)
        assert exc.value.reason == "bad_claims"


def test_cache_turns_a_repeat_into_a_lookup_and_revocation_drops_it() -> None:
    sec = SecurityContext(load_settings({"GATEWAY_JWT_SECRET": SECRET, "GATEWAY_AUDIT_LOG": "off"}))
    f = AuthFilter("r", ("jwt",), (), sec)
    tok = jwt.encode(claims(jti="j-cache"), SECRET, algorithm="HS256")
    calls = 0
    real = sec.checker.verify

    def counting(token: bytes, now: float) -> Any:
        nonlocal calls
        calls += 1
        return real(token, now)

    sec.checker.verify = counting  # type: ignore[method-assign]
    for _ in range(5):
        ctx = RequestContext()
        ctx.headers = [(b"authorization", b"Bearer " + tok.encode())]
        assert f.access(ctx) is None
        assert ctx.consumer_id == "alice"
    assert calls == 1
    sec.revocations.on_change("revoked/j-cache", {"exp": time.time() + 600})
    ctx = RequestContext()
    ctx.headers = [(b"authorization", b"Bearer " + tok.encode())]
    assert f.access(ctx).status == 401
    assert sec.failures[failure_index("jwt", "revoked")] == 1


def test_cache_is_bounded() -> None:
    sec = SecurityContext(load_settings({"GATEWAY_JWT_SECRET": SECRET, "GATEWAY_AUDIT_LOG": "off"}))
    from gateway.security.context import CachedIdentity

    for i in range(MAX_CACHED + 100):
        sec.cache_put(b"t%d" % i, CachedIdentity("a", None, frozenset(), time.time() + 60, None, "jwt"))
    assert len(sec.cache) <= MAX_CACHED


# --- JWKS ---------------------------------------------------------------------------------------------

def jwk_of(public_key: Any, kid: str) -> dict[str, Any]:
    d = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(public_key))
    d.update(kid=kid, use="sig", alg="RS256")
    return d


class JwksServer:
    """A real local HTTP server serving a JWKS document; counts requests; can fail or stall."""

    def __init__(self) -> None:
        self.doc: Any = {"keys": []}
        self.hits = 0
        self.mode = "ok"           # ok | error | garbage | stall
        self.server: asyncio.AbstractServer | None = None

    async def start(self) -> str:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        port = self.server.sockets[0].getsockname()[1]
        return f"http://127.0.0.1:{port}/jwks"

    async def _handle(self, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        self.hits += 1
        try:
            await r.readuntil(b"\r\n\r\n")
            if self.mode == "stall":
                await asyncio.sleep(30)
            if self.mode == "error":
                w.write(b"HTTP/1.0 500 Oops\r\n\r\n")
            else:
                body = b"{not json" if self.mode == "garbage" else json.dumps(self.doc).encode()
                w.write(b"HTTP/1.0 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
            await w.drain()
        except (asyncio.CancelledError, ConnectionError):
            pass
        finally:
            w.close()

    def close(self) -> None:
        if self.server is not None:
            self.server.close()


def test_jwks_rotation_flood_and_failures() -> None:
    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        k1, k2 = rsa_keypair()[0], rsa_keypair()[0]
        srv = JwksServer()
        url = await srv.start()
        srv.doc = {"keys": [jwk_of(k1.public_key(), "k1")]}
        clock = [1000.0]
        src = JwksKeys(url, cooldown=10.0, refresh=3600.0, clock=lambda: clock[0])
        src.start(loop)
        for _ in range(100):
            await asyncio.sleep(0.02)
            if "k1" in src.keys:
                break
        assert "k1" in src.keys and src.get("RS256", "k1") is not None
        assert src.get("HS256", "k1") is None           # the key's family only
        # A flood of unknown kids within the cooldown: no fetch at all.
        hits = srv.hits
        for i in range(1000):
            src.unknown_kid(f"random-{i}")
        await asyncio.sleep(0.2)
        assert srv.hits == hits
        # Rotation: the issuer publishes k2 and drops k1; after the cooldown one unknown kid → one fetch.
        srv.doc = {"keys": [jwk_of(k2.public_key(), "k2")]}
        clock[0] += 10.0
        for i in range(1000):
            src.unknown_kid(f"k2-{i}")
        for _ in range(100):
            await asyncio.sleep(0.02)
            if "k2" in src.keys:
                break
        assert srv.hits == hits + 1
        assert set(src.keys) == {"k2"}                   # k1 no longer published: refused
        # The endpoint fails, serves garbage, stalls: the last good set stays.
        for mode in ("error", "garbage", "stall"):
            srv.mode = mode
            clock[0] += 10.0
            src.unknown_kid("x")
            await asyncio.sleep(0.3 if mode != "stall" else 0.1)
            assert set(src.keys) == {"k2"}
        src.close()
        srv.close()

    asyncio.run(scenario())


def test_parse_jwks_skips_unusable_keys() -> None:
    k = rsa_keypair()[0]
    good = jwk_of(k.public_key(), "good")
    doc = {"keys": [good, {**good, "kid": "enc", "use": "enc"}, {"kty": "oct", "kid": "sym", "k": "AAAA"},
                    {**good, "kid": "wrong-alg", "alg": "ES256"}, "junk", {"kid": "nokty"}]}
    assert set(parse_jwks(json.dumps(doc).encode())) == {"good"}


def test_static_token_validation_end_to_end_hs() -> None:
    sec = SecurityContext(load_settings({"GATEWAY_JWT_SECRET": SECRET, "GATEWAY_AUDIT_LOG": "off"}))
    f = AuthFilter("r", ("jwt",), ("users:read",), sec)
    ctx = RequestContext()
    ctx.headers = [(b"authorization", b"Bearer " + raw_token(RS, claims(), secret=SECRET).encode())]
    assert f.access(ctx).status == 401      # RS256 header on an HS-only gateway
