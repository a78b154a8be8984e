"""API keys and JWT revocation through the real processes: the admin API and `gateway apikey`,
2 workers, 2 instances over a redis-server of the test's own, and Redis down (503, not 200/401)."""
from __future__ import annotations

import http.client
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import pytest

from tests.security.tokens import SECRET, claims, raw_token
from tests.support.gateway_proc import REPO, GatewayProcess, UpstreamProcess, wait_until
from tests.support.redis_server import RedisProcess

ADMIN = "admin-token-for-tests"


def toml(up: UpstreamProcess) -> str:
    return f"""
[[services]]
name = "up"
targets = [{{ url = "{up.url}" }}]
[[routes]]
name = "open"
path = "/open"
service = "up"
[[routes]]
name = "api"
path = "/api"
service = "up"
auth = ["jwt", "api_key"]
scopes = ["users:read"]
"""


def call(port: int, method: str, path: str, headers: dict[str, str] | None = None,
         body: Any = None) -> tuple[int, dict[str, str], Any]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        data = json.dumps(body).encode() if body is not None else None
        conn.request(method, path, body=data, headers={"Host": "localhost", **(headers or {})})
        r = conn.getresponse()
        raw = r.read()
        hdrs = {k.lower(): v for k, v in r.getheaders()}
        try:
            return r.status, hdrs, json.loads(raw)
        except ValueError:
            return r.status, hdrs, raw
    finally:
        conn.close()


def admin(gw: GatewayProcess, method: str, path: str, body: Any = None) -> tuple[int, Any]:
    status, _, out = call(gw.admin_port, method, path, {"Authorization": f"Bearer {ADMIN}",
                                                        "Content-Type": "application/json"}, body)
    return status, out


def statuses(port: int, headers: dict[str, str], n: int = 12) -> set[int]:
    # New connections each time: with 2 workers (SO_REUSEPORT) they spread over both.
    return {call(port, "GET", "/api/x", headers)[0] for _ in range(n)}


def cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    full = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}
    full.update(env, PYTHONPATH=str(REPO))
    return subprocess.run([sys.executable, "-m", "gateway", *args], env=full, cwd=str(REPO),
                          capture_output=True, text=True, timeout=60)


@pytest.fixture
def up() -> Iterator[UpstreamProcess]:
    u = UpstreamProcess()
    yield u
    u.stop()


@pytest.fixture
def redis() -> Iterator[RedisProcess]:
    with RedisProcess() as server:
        yield server


def test_api_key_lifecycle_two_workers(up: UpstreamProcess, tmp_path: Any) -> None:
    audit = tmp_path / "audit.jsonl"
    env = {"GATEWAY_WORKERS": "2", "GATEWAY_ADMIN_TOKEN": ADMIN, "GATEWAY_JWT_SECRET": SECRET,
           "GATEWAY_AUDIT_LOG": str(audit)}
    with GatewayProcess(toml(up), env=env) as gw:
        wait_until(lambda: call(gw.admin_port, "GET", "/ready")[0] == 200, 15)
        status, made = admin(gw, "POST", "/keys", {"name": "ci", "user": "bob", "org": "acme",
                                                   "scopes": ["users:read"]})
        assert status == 201, made
        key, key_id = made["key"], made["id"]
        assert key.startswith(f"gw_{key_id}_") and "hash" not in made and "salt" not in made
        wait_until(lambda: statuses(gw.port, {"X-API-Key": key}) == {200}, 5)
        # Both spellings; upstream gets the identity, never the key.
        for hdr in ({"X-API-Key": key}, {"Authorization": f"ApiKey {key}"}):
            status, _, echo = call(gw.port, "GET", "/api/x", {**hdr, "X-Consumer-Id": "root"})
            assert status == 200
            sent = {k.lower(): v for k, v in echo["headers"]}
            assert sent["x-consumer-id"] == "bob" and sent["x-consumer-org"] == "acme"
            assert sent["x-consumer-key-id"] == key_id and sent["x-auth-method"] == "api_key"
            assert "x-api-key" not in sent and "authorization" not in sent
            assert key not in json.dumps(echo)
        # Never from the query string; a wrong secret with a right id; two X-API-Key fields.
        assert call(gw.port, "GET", f"/api/x?api_key={key}")[0] == 401
        assert call(gw.port, "GET", "/api/x", {"X-API-Key": key[:-1] + ("A" if key[-1] != "A" else "B")})[0] == 401
        conn = http.client.HTTPConnection("127.0.0.1", gw.port, timeout=10)
        conn.putrequest("GET", "/api/x")
        conn.putheader("X-API-Key", key)
        conn.putheader("X-API-Key", key)
        conn.endheaders()
        assert conn.getresponse().status == 401
        conn.close()
        # Scopes: a key without users:read → 403.
        _, weak = admin(gw, "POST", "/keys", {"name": "weak", "scopes": ["other"]})
        wait_until(lambda: statuses(gw.port, {"X-API-Key": weak["key"]}, 4) == {403}, 5)
        # GET /keys shows public records only.
        status, listed = admin(gw, "GET", "/keys")
        assert {k["id"] for k in listed["keys"]} == {key_id, weak["id"]}
        assert key not in json.dumps(listed) and "hash" not in json.dumps(listed)
        # Bad admin input → 400 naming the field.
        for body, field in (({}, "name"), ({"name": "x", "scopes": "a"}, "scopes"),
                            ({"name": "x", "expires_in": -1}, "expires_in"), ({"name": "x", "bogus": 1}, "bogus")):
            status, out = admin(gw, "POST", "/keys", body)
            assert status == 400 and out["message"].startswith(field), out
        # Revoke: refused by every worker within 1 s.
        status, _ = admin(gw, "DELETE", f"/keys/{key_id}")
        assert status == 200
        t0 = time.monotonic()
        wait_until(lambda: statuses(gw.port, {"X-API-Key": key}) == {401}, 5)
        assert time.monotonic() - t0 < 1.5
        assert admin(gw, "DELETE", f"/keys/{key_id}")[0] == 404
        # The CLI through the admin API (no Redis here).
        cenv = {"GATEWAY_ADMIN_PORT": str(gw.admin_port), "GATEWAY_ADMIN_TOKEN": ADMIN}
        p = cli("apikey", "create", "--name", "from-cli", "--user", "carol", "--scope", "users:read", env=cenv)
        assert p.returncode == 0, p.stderr
        made2 = json.loads(p.stdout)
        wait_until(lambda: statuses(gw.port, {"X-API-Key": made2["key"]}, 4) == {200}, 5)
        p = cli("apikey", "list", env=cenv)
        assert made2["id"] in p.stdout and made2["key"] not in p.stdout
        p = cli("apikey", "revoke", made2["id"], env=cenv)
        assert p.returncode == 0, p.stderr
        wait_until(lambda: statuses(gw.port, {"X-API-Key": made2["key"]}, 4) == {401}, 5)
        assert cli("apikey", "create", "--name", "x", env={"GATEWAY_ADMIN_PORT": str(gw.admin_port)}).returncode == 2
        # The audit log has the lifecycle, with fingerprints only.
        wait_until(lambda: audit.exists() and "key_revoked" in audit.read_text(), 5)
        text = audit.read_text() + gw.stderr + gw.stdout
        for secret in (key, weak["key"], made2["key"], key.rsplit("_", 1)[1], ADMIN):
            assert secret not in text
        events = [json.loads(line)["event"] for line in audit.read_text().splitlines()]
        assert "key_created" in events and "key_revoked" in events and "auth_failure" in events


def test_jwt_revocation_two_workers(up: UpstreamProcess) -> None:
    env = {"GATEWAY_WORKERS": "2", "GATEWAY_ADMIN_TOKEN": ADMIN, "GATEWAY_JWT_SECRET": SECRET,
           "GATEWAY_AUDIT_LOG": "off"}
    with GatewayProcess(toml(up), env=env) as gw:
        wait_until(lambda: call(gw.admin_port, "GET", "/ready")[0] == 200, 15)
        t1 = raw_token({"alg": "HS256"}, claims(jti="rev-1"), secret=SECRET)
        t2 = raw_token({"alg": "HS256"}, claims(jti="rev-2"), secret=SECRET)
        for t in (t1, t2):      # cached as valid in both workers first
            assert statuses(gw.port, {"Authorization": f"Bearer {t}"}) == {200}
        assert admin(gw, "POST", "/tokens/revoke", {"jti": "rev-1"})[0] == 200
        assert admin(gw, "POST", "/tokens/revoke", {"token": t2})[0] == 200
        t0 = time.monotonic()
        wait_until(lambda: statuses(gw.port, {"Authorization": f"Bearer {t1}"}) == {401}
                   and statuses(gw.port, {"Authorization": f"Bearer {t2}"}) == {401}, 5)
        assert time.monotonic() - t0 < 1.5
        _, listed = admin(gw, "GET", "/tokens/revoked")
        assert {r["jti"] for r in listed["revoked"]} == {"rev-1", "rev-2"}
        assert admin(gw, "POST", "/tokens/revoke", {})[0] == 400
        assert admin(gw, "POST", "/tokens/revoke", {"token": "not-a-jwt"})[0] == 400


def test_two_instances_over_redis_keys_and_revocation(up: UpstreamProcess, redis: RedisProcess) -> None:
    env = {"GATEWAY_WORKERS": "2", "GATEWAY_ADMIN_TOKEN": ADMIN, "GATEWAY_JWT_SECRET": SECRET,
           "GATEWAY_REDIS_URL": redis.url, "GATEWAY_AUDIT_LOG": "off"}
    with GatewayProcess(toml(up), env=env) as a, GatewayProcess(toml(up), env=env) as b:
        for g in (a, b):
            wait_until(lambda g=g: call(g.admin_port, "GET", "/ready")[0] == 200, 15)
        # A key made by the CLI straight into Redis works on both instances within 1 s.
        p = cli("apikey", "create", "--name", "shared", "--user", "dan", "--scope", "users:read",
                env={"GATEWAY_REDIS_URL": redis.url})
        assert p.returncode == 0, p.stderr
        made = json.loads(p.stdout)
        t0 = time.monotonic()
        wait_until(lambda: all(statuses(g.port, {"X-API-Key": made["key"]}, 4) == {200} for g in (a, b)), 5)
        assert time.monotonic() - t0 < 1.5
        # A JWT revoked on A is refused by both instances' workers within 1 s.
        tok = raw_token({"alg": "HS256"}, claims(jti="shared-rev"), secret=SECRET)
        for g in (a, b):
            assert statuses(g.port, {"Authorization": f"Bearer {tok}"}, 6) == {200}
        assert admin(a, "POST", "/tokens/revoke", {"token": tok})[0] == 200
        t0 = time.monotonic()
        wait_until(lambda: all(statuses(g.port, {"Authorization": f"Bearer {tok}"}, 6) == {401} for g in (a, b)), 5)
        assert time.monotonic() - t0 < 1.5
        # Revoked with the CLI: refused everywhere within 1 s.
        assert cli("apikey", "revoke", made["id"], env={"GATEWAY_REDIS_URL": redis.url}).returncode == 0
        t0 = time.monotonic()
        wait_until(lambda: all(statuses(g.port, {"X-API-Key": made["key"]}, 4) == {401} for g in (a, b)), 5)
        assert time.monotonic() - t0 < 1.5
        # Redis down: a key this node knows still works, one it cannot check is 503 (not 200, not 401).
        _, known = admin(a, "POST", "/keys", {"name": "known", "scopes": ["users:read"]})
        wait_until(lambda: all(statuses(g.port, {"X-API-Key": known["key"]}, 4) == {200} for g in (a, b)), 5)
        redis.kill()
        wait_until(lambda: call(a.admin_port, "GET", "/ready")[0] == 503, 10)
        assert statuses(a.port, {"X-API-Key": known["key"]}, 6) == {200}
        unknown = "gw_0123456789ab_" + "A" * 43
        status, hdrs, body = call(a.port, "GET", "/api/x", {"X-API-Key": unknown})
        assert status == 503 and hdrs.get("retry-after") == "1", body
        # And the admin write fails with 503, changing nothing.
        assert admin(a, "POST", "/keys", {"name": "later"})[0] == 503


def post(port: int, path: str, body: Any = None, headers: dict[str, str] | None = None) -> tuple[int, Any]:
    status, _, out = call(port, "POST", path, {"Content-Type": "application/json", **(headers or {})}, body)
    return status, out


@pytest.mark.parametrize("workers", ["1", "2"])
def test_token_service_issue_refresh_rotation_reuse_and_revoke(up: UpstreamProcess, workers: str) -> None:
    env = {"GATEWAY_WORKERS": workers, "GATEWAY_ADMIN_TOKEN": ADMIN, "GATEWAY_JWT_SECRET": SECRET,
           "GATEWAY_AUDIT_LOG": "off", "GATEWAY_JWT_ISSUER": "https://gw.test"}
    with GatewayProcess(toml(up), env=env) as gw:
        wait_until(lambda: call(gw.admin_port, "GET", "/ready")[0] == 200, 15)
        _, made = admin(gw, "POST", "/keys", {"name": "svc", "user": "erin", "org": "acme", "scopes": ["users:read"]})
        key = made["key"]
        wait_until(lambda: post(gw.port, "/auth/token", {}, {"X-API-Key": key})[0] == 200, 5)
        # No key, a bad key, a key in the query: 401 with the SPEC body.
        assert post(gw.port, "/auth/token", {})[0] == 401
        assert post(gw.port, "/auth/token", {}, {"X-API-Key": "gw_000000000000_" + "A" * 43})[0] == 401
        assert post(gw.port, f"/auth/token?api_key={key}", {})[0] == 401
        status, pair = post(gw.port, "/auth/token", None, {"Authorization": f"ApiKey {key}"})
        assert status == 200, pair
        assert pair["token_type"] == "Bearer" and pair["expires_in"] > 0
        access, refresh1 = pair["access_token"], pair["refresh_token"]
        import jwt as pyjwt

        c = pyjwt.decode(access, SECRET, algorithms=["HS256"], options={"verify_aud": False})
        assert (c["sub"], c["org"], c["scope"], c["iss"]) == ("erin", "acme", "users:read", "https://gw.test")
        assert isinstance(c["jti"], str)
        assert statuses(gw.port, {"Authorization": f"Bearer {access}"}, 4) == {200}
        # A refresh token is never an access token.
        assert statuses(gw.port, {"Authorization": f"Bearer {refresh1}"}, 4) == {401}
        # Rotation: refresh1 → (access2, refresh2).
        status, pair2 = post(gw.port, "/auth/refresh", {"refresh_token": refresh1})
        assert status == 200, pair2
        access2, refresh2 = pair2["access_token"], pair2["refresh_token"]
        assert refresh2 != refresh1 and statuses(gw.port, {"Authorization": f"Bearer {access2}"}, 4) == {200}
        # Reuse of the rotated refresh1: 401, and the whole family is revoked (refresh2, access tokens).
        assert post(gw.port, "/auth/refresh", {"refresh_token": refresh1})[0] == 401
        assert post(gw.port, "/auth/refresh", {"refresh_token": refresh2})[0] == 401
        t0 = time.monotonic()
        wait_until(lambda: statuses(gw.port, {"Authorization": f"Bearer {access2}"}, 6) == {401}
                   and statuses(gw.port, {"Authorization": f"Bearer {access}"}, 6) == {401}, 5)
        assert time.monotonic() - t0 < 1.5
        # /auth/revoke on a fresh access token: refused everywhere within 1 s.
        _, pair3 = post(gw.port, "/auth/token", {}, {"X-API-Key": key})
        assert statuses(gw.port, {"Authorization": f"Bearer {pair3['access_token']}"}, 4) == {200}
        assert post(gw.port, "/auth/revoke", {"token": pair3["access_token"]})[0] == 200
        wait_until(lambda: statuses(gw.port, {"Authorization": f"Bearer {pair3['access_token']}"}, 6) == {401}, 5)
        # Revoking the refresh token ends its family.
        assert post(gw.port, "/auth/revoke", {"token": pair3["refresh_token"]})[0] == 200
        assert post(gw.port, "/auth/refresh", {"refresh_token": pair3["refresh_token"]})[0] == 401
        # Garbage: 200 for revoke (RFC 7009), 400 for a body that is not JSON.
        assert post(gw.port, "/auth/revoke", {"token": "x.y.z"})[0] == 200
        assert call(gw.port, "POST", "/auth/refresh", {"Content-Type": "application/json"}, None)[0] == 400
        # Only POST.
        assert call(gw.port, "GET", "/auth/token")[0] in (404, 405)


def test_token_service_port_bounds_a_hostile_local_peer(up: UpstreamProcess) -> None:
    # The service's loopback port is reachable by local processes directly: it must hold against a
    # peer that floods pipelined requests without reading, sends a huge body, or sends garbage.
    import socket

    env = {"GATEWAY_JWT_SECRET": SECRET, "GATEWAY_AUDIT_LOG": "off"}
    with GatewayProcess(toml(up), env=env) as gw:
        addr = gw.wait_stderr("token service on ").split("token service on ", 1)[1].split()[0]
        host, port = addr.rsplit(":", 1)
        req = b"POST /auth/revoke HTTP/1.1\r\nHost: x\r\nContent-Length: 14\r\n\r\n{\"token\":\"a\"}\n"
        s = socket.create_connection((host, int(port)), timeout=5)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        closed = False
        deadline = time.monotonic() + 60    # never reading: the service must cut us off. Until a
        try:                                # deadline, not a count: how many requests fit before
            while time.monotonic() < deadline:  # the cut depends on the machine's speed
                s.sendall(req)
        except OSError:
            closed = True
        s.close()
        assert closed
        def closed_without_answer(*parts: bytes, pause: float = 0.0) -> bool:
            # A close with our bytes still unread is a reset on Linux, whether it reaches us while we
            # send or while we wait. A close that found nothing unread is a FIN: if we are still
            # sending then, the service's kernel answers our next bytes with a reset and the send
            # after that fails with EPIPE. All three are "closed without an answer". (EPIPE used to
            # escape here: a slow or descheduled sender, as on a loaded machine, met the FIN first.)
            try:
                c = socket.create_connection((host, int(port)), timeout=5)
            except ConnectionRefusedError:
                raise AssertionError(f"token service port refused; gateway alive: {gw.alive()}; "
                                     f"stderr:\n{gw.stderr}") from None
            try:
                for i, part in enumerate(parts):
                    if i:
                        time.sleep(pause)
                    c.sendall(part)
                return c.recv(100) == b""
            except (ConnectionResetError, BrokenPipeError):
                return True
            finally:
                c.close()

        # over the body bound, and garbage: closed without an answer
        over = b"POST /auth/revoke HTTP/1.1\r\nHost: x\r\nContent-Length: 1000000\r\n\r\n"
        assert closed_without_answer(over + b"x" * 100000)
        # The same from a slow peer: the service has read all we sent (and closed) before we send
        # more, which is what a descheduled sender does by chance: this is the EPIPE case, every time.
        assert closed_without_answer(over + b"x" * 20000, b"x" * 20000, b"x" * 20000, pause=0.5)
        assert closed_without_answer(b"\x00\x01 not http\r\n\r\n")
        # Still serving through the gateway.
        assert call(gw.port, "POST", "/auth/revoke", {"Content-Type": "application/json"}, {"token": "x"})[0] == 200
