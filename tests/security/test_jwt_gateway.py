"""JWT on the wire: a real gateway process (RS256 public key) in front of the real echo upstream.

The attack table: every token class issue 11 names is answered 401 with the same body and
`WWW-Authenticate`, and the upstream's request total does not move (nothing was forwarded).
Then the admitted case: identity headers upstream, client copies removed, scopes → 403.
"""
from __future__ import annotations

import http.client
import json
import time
from collections.abc import Iterator
from typing import Any

import pytest

from tests.security.tokens import SECRET, b64, claims, raw_token, rsa_keypair
from tests.support.gateway_proc import GatewayProcess, UpstreamProcess

KEY, PEM = rsa_keypair()
RS = {"alg": "RS256", "typ": "JWT"}


def request(port: int, path: str, headers: list[tuple[str, str]] | None = None) -> tuple[int, dict[str, str], Any]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.putrequest("GET", path)
        for k, v in headers or []:
            conn.putheader(k, v)
        conn.endheaders()
        r = conn.getresponse()
        body = r.read()
        hdrs: dict[str, str] = {}
        for k, v in r.getheaders():
            hdrs[k.lower()] = v if k.lower() not in hdrs else hdrs[k.lower()] + ", " + v
        try:
            return r.status, hdrs, json.loads(body)
        except ValueError:
            return r.status, hdrs, body
    finally:
        conn.close()


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[GatewayProcess, UpstreamProcess]]:
    d = tmp_path_factory.mktemp("keys")
    (d / "pub.pem").write_bytes(PEM)
    up = UpstreamProcess()
    config = f"""
[[services]]
name = "up"
targets = [{{ url = "{up.url}" }}]
[[routes]]
name = "open"
path = "/open"
service = "up"
[[routes]]
name = "admin-only"
path = "/admin"
service = "up"
auth = ["jwt"]
scopes = ["admin"]
[[routes]]
name = "api"
path = "/api"
service = "up"
auth = ["jwt"]
scopes = ["users:read"]
"""
    audit = d / "audit.jsonl"
    g = GatewayProcess(config, env={"GATEWAY_JWT_PUBLIC_KEY": str(d / "pub.pem"), "GATEWAY_AUDIT_LOG": str(audit),
                                    "GATEWAY_JWT_LEEWAY": "5"})
    g.audit_path = audit  # type: ignore[attr-defined]
    try:
        yield g, up
    finally:
        g.kill()
        up.stop()


def upstream_total(port: int) -> int:
    status, _, body = request(port, "/open/count")
    assert status == 200
    return int(body["total"])


def big_claims() -> dict[str, Any]:
    return claims(pad="x" * 9000)


ATTACKS: list[tuple[str, Any]] = [
    ("alg none", lambda: raw_token({"alg": "none", "typ": "JWT"}, claims())),
    ("alg None spelled", lambda: raw_token({"alg": "None"}, claims())),
    ("HS256 signed with the RSA public key (confusion)", lambda: raw_token({"alg": "HS256"}, claims(), secret=PEM)),
    ("HS256 with a guessed secret", lambda: raw_token({"alg": "HS256"}, claims(), secret=SECRET)),
    ("crit header", lambda: raw_token({**RS, "crit": ["exp"]}, claims(), rsa_key=KEY)),
    ("embedded jku", lambda: raw_token({**RS, "jku": "http://127.0.0.1:1/jwks"}, claims(), rsa_key=KEY)),
    ("embedded jwk", lambda: raw_token({**RS, "jwk": {"kty": "RSA", "n": "AQAB", "e": "AQAB"}}, claims(), rsa_key=KEY)),
    ("embedded x5u", lambda: raw_token({**RS, "x5u": "http://127.0.0.1:1/cert"}, claims(), rsa_key=KEY)),
    ("over 8 KiB", lambda: raw_token(RS, big_claims(), rsa_key=KEY)),
    ("exp a string", lambda: raw_token(RS, claims(exp=str(int(time.time()) + 600)), rsa_key=KEY)),
    ("nbf a string", lambda: raw_token(RS, claims(nbf="0"), rsa_key=KEY)),
    ("exp a boolean", lambda: raw_token(RS, claims(exp=True), rsa_key=KEY)),
    ("exp beyond 2^53", lambda: raw_token(RS, claims(exp=2 ** 60), rsa_key=KEY)),
    ("duplicate claim keys", lambda: raw_token(
        RS, '{"sub":"alice","exp":' + str(int(time.time() + 600)) + ',"sub":"root"}', rsa_key=KEY)),
    ("duplicate header keys", lambda: raw_token('{"alg":"RS256","alg":"none"}', claims(), rsa_key=KEY)),
    ("malformed base64 (padding)", lambda: raw_token(RS, claims(), rsa_key=KEY).replace(".", "=.", 1)),
    ("malformed base64 (alphabet)", lambda: "*" + raw_token(RS, claims(), rsa_key=KEY)),
    ("two segments", lambda: ".".join(raw_token(RS, claims(), rsa_key=KEY).split(".")[:2])),
    ("expired", lambda: raw_token(RS, claims(exp=int(time.time()) - 3600), rsa_key=KEY)),
    ("not yet valid", lambda: raw_token(RS, claims(nbf=int(time.time()) + 3600), rsa_key=KEY)),
    ("iat in the future", lambda: raw_token(RS, claims(iat=int(time.time()) + 3600), rsa_key=KEY)),
    ("no exp", lambda: raw_token(RS, claims(exp=None), rsa_key=KEY)),
    ("no sub", lambda: raw_token(RS, claims(sub=None), rsa_key=KEY)),
    ("sub a number", lambda: raw_token(RS, claims(sub=42), rsa_key=KEY)),
    ("jti a number", lambda: raw_token(RS, claims(jti=7), rsa_key=KEY)),
    ("tampered payload", lambda: (lambda t: t[0] + "." + b64(json.dumps(claims(sub="root")).encode()) + "." + t[2])(
        raw_token(RS, claims(), rsa_key=KEY).split("."))),
    ("signature of another key", lambda: raw_token(RS, claims(), rsa_key=rsa_keypair()[0])),
    ("claims not an object", lambda: raw_token(RS, "[1,2]", rsa_key=KEY)),
    ("NaN exp", lambda: raw_token(RS, '{"sub":"a","exp":NaN}', rsa_key=KEY)),
]


@pytest.mark.parametrize("label,make", ATTACKS, ids=[a[0] for a in ATTACKS])
def test_attack_token_is_401_and_never_forwarded(gw: tuple[GatewayProcess, UpstreamProcess], label: str, make: Any) -> None:
    g, _ = gw
    before = upstream_total(g.port)
    status, headers, body = request(g.port, "/api/users", [("Authorization", f"Bearer {make()}")])
    assert status == 401, (label, status, body)
    assert headers["www-authenticate"] == 'Bearer error="invalid_token"'
    # The same error and message whatever the reason (SPEC §4).
    assert (body["error"], body["message"]) == ("unauthorized", "Missing or invalid credentials.")
    assert upstream_total(g.port) == before + 1     # only the /open/count probe itself


def valid() -> str:
    return raw_token(RS, claims(), rsa_key=KEY)


@pytest.mark.parametrize("label,headers,path", [
    ("no credential", [], "/api/users"),
    ("token in the query string", [], "/api/users?access_token={t}"),
    ("token in a cookie", [("Cookie", "access_token={t}")], "/api/users"),
    ("two Authorization fields", [("Authorization", "Bearer {t}"), ("Authorization", "Bearer {t}")], "/api/users"),
    ("Basic scheme", [("Authorization", "Basic YWxpY2U6cHc=")], "/api/users"),
    ("empty bearer", [("Authorization", "Bearer ")], "/api/users"),
])
def test_credential_placement_refused(gw: tuple[GatewayProcess, UpstreamProcess], label: str,
                                      headers: list[tuple[str, str]], path: str) -> None:
    g, _ = gw
    t = valid()
    before = upstream_total(g.port)
    status, _, _ = request(g.port, path.format(t=t), [(k, v.format(t=t)) for k, v in headers])
    assert status == 401, label
    assert upstream_total(g.port) == before + 1


def test_valid_token_admitted_with_identity_upstream(gw: tuple[GatewayProcess, UpstreamProcess]) -> None:
    g, _ = gw
    t = valid()
    for scheme in ("Bearer", "bearer", "BEARER"):   # the scheme name is case-insensitive
        status, _, body = request(g.port, "/api/users", [
            ("Authorization", f"{scheme} {t}"), ("X-Consumer-Id", "root"), ("X-Consumer-Scopes", "admin"),
            ("X-Auth-Method", "api_key"), ("X-Consumer-Org", "evil")])
        assert status == 200, body
        sent = [(k.lower(), v) for k, v in body["headers"]]
        assert ("x-consumer-id", "alice") in sent
        assert ("x-consumer-org", "acme") in sent
        assert ("x-consumer-scopes", "bench:read users:read") in sent
        assert ("x-auth-method", "jwt") in sent
        # The client's copies were removed first: exactly one of each.
        for name in ("x-consumer-id", "x-consumer-org", "x-consumer-scopes", "x-auth-method"):
            assert [k for k, _ in sent].count(name) == 1


def test_missing_scope_is_403(gw: tuple[GatewayProcess, UpstreamProcess]) -> None:
    g, _ = gw
    before = upstream_total(g.port)
    status, headers, body = request(g.port, "/admin", [("Authorization", f"Bearer {valid()}")])
    assert status == 403
    assert body["error"] == "forbidden"
    assert 'error="insufficient_scope"' in headers["www-authenticate"]
    assert upstream_total(g.port) == before + 1


def test_audit_records_reasons_but_no_token(gw: tuple[GatewayProcess, UpstreamProcess]) -> None:
    g, _ = gw
    t = raw_token(RS, claims(exp=int(time.time()) - 3600, jti="audit-probe"), rsa_key=KEY)
    status, _, body = request(g.port, "/api/x", [("Authorization", f"Bearer {t}")])
    assert status == 401
    path = g.audit_path  # type: ignore[attr-defined]
    deadline = time.monotonic() + 5
    records: list[dict[str, Any]] = []
    while time.monotonic() < deadline:
        records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        if any(r["request_id"] == body["request_id"] for r in records):
            break
        time.sleep(0.05)
    mine = [r for r in records if r["request_id"] == body["request_id"]]
    assert mine and mine[0]["event"] == "auth_failure"
    assert mine[0]["details"]["reason"] == "expired"
    assert len(mine[0]["details"]["credential"]) == 8
    text = path.read_text() + g.stderr + g.stdout
    for secret_part in (t, t.split(".")[2], valid().split(".")[2]):
        assert secret_part not in text
