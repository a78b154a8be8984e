"""`gateway jwt mint` and `gateway apikey create|list|revoke` (SPEC §1), and the config cross-check.

Each command returns its exit code: 0 done, 2 bad arguments or configuration (one line naming the
option or variable), 1 a run-time failure (the admin API or Redis unreachable).
"""
from __future__ import annotations

import argparse
import secrets
import time
from typing import Any

from .jwt_check import HS


class _ArgError(Exception):
    pass


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> Any:   # one line, exit 2 (our caller prints it)
        raise _ArgError(message)


def config_problems(settings: Any, config: Any) -> list[str]:
    """A route asking for a credential the settings cannot check (no JWT key at all)."""
    out = []
    has_jwt = bool(settings.jwt_secret or settings.jwt_public_key or settings.jwt_jwks_url)
    for i, rc in enumerate(config.routes):
        if "jwt" in rc.auth and not has_jwt:
            out.append(f"routes[{i}].auth: jwt needs GATEWAY_JWT_SECRET, GATEWAY_JWT_PUBLIC_KEY or "
                       f"GATEWAY_JWT_JWKS_URL (no key to verify tokens with)")
    return out


def mint_token(settings: Any, sub: str, org: str | None = None, scope: str | None = None,
               ttl: float = 3600.0, *, kind: str | None = None, jti: str | None = None,
               now: float | None = None) -> str:
    """An HS256 token signed with GATEWAY_JWT_SECRET (the CLI, the demo, the token service)."""
    import jwt

    now = time.time() if now is None else now
    claims: dict[str, Any] = {"sub": sub, "iat": int(now), "exp": int(now + ttl), "jti": jti or secrets.token_hex(12)}
    if org:
        claims[settings.jwt_org_claim] = org
    if scope:
        claims["scope"] = scope
    if settings.jwt_issuer:
        claims["iss"] = settings.jwt_issuer
    if settings.jwt_audience:
        claims["aud"] = settings.jwt_audience
    if kind:
        claims["typ"] = kind
    alg = next((a for a in (settings.jwt_algorithms or HS) if a in HS), "HS256")
    return jwt.encode(claims, settings.jwt_secret, algorithm=alg)


def cmd_jwt(settings: Any, args: list[str], err: Any) -> int:
    p = _Parser(prog="gateway jwt", add_help=False)
    p.add_argument("action", choices=["mint"])
    p.add_argument("--sub", required=True)
    p.add_argument("--org")
    p.add_argument("--scope")
    p.add_argument("--ttl", type=float, default=3600.0)
    try:
        ns = p.parse_args(args)
    except _ArgError as exc:
        err(f"jwt: {exc}")
        return 2
    if not settings.jwt_secret:
        err("jwt mint: needs GATEWAY_JWT_SECRET (tokens are signed HS256 with it)")
        return 2
    if not 1 <= ns.ttl <= 31_536_000:
        err(f"jwt mint: --ttl: expected seconds in [1, 31536000], got {ns.ttl:g}")
        return 2
    if settings.jwt_algorithms and not any(a in HS for a in settings.jwt_algorithms):
        err("jwt mint: GATEWAY_JWT_ALGORITHMS allows no HS algorithm: a minted token would be refused")
        return 2
    print(mint_token(settings, ns.sub, ns.org, ns.scope, ns.ttl))
    return 0


# --- gateway apikey -------------------------------------------------------------------------------
#
# Where the keys live decides where the command writes:
# - GATEWAY_REDIS_URL set: straight into the Redis store (persisted and published like an admin
#   write), so every running instance applies it within 1 s, and it works with no gateway running.
# - no Redis: the keys live in the running gateway's memory only, so the command goes through that
#   gateway's admin API (GATEWAY_ADMIN_HOST/PORT, with GATEWAY_ADMIN_TOKEN for create and revoke).

def _apikey_parser() -> _Parser:
    p = _Parser(prog="gateway apikey", add_help=False)
    sub = p.add_subparsers(dest="action", required=True, parser_class=_Parser)
    c = sub.add_parser("create", add_help=False)
    c.add_argument("--name", required=True)
    c.add_argument("--org")
    c.add_argument("--user")
    c.add_argument("--scope", default="")
    c.add_argument("--expires-in", type=float, dest="expires_in")
    sub.add_parser("list", add_help=False)
    r = sub.add_parser("revoke", add_help=False)
    r.add_argument("id")
    return p


def cmd_apikey(settings: Any, args: list[str], err: Any) -> int:
    import asyncio

    import orjson

    from gateway.admin.api import AdminError

    from .admin import parse_key_request

    try:
        ns = _apikey_parser().parse_args(args)
    except _ArgError as exc:
        err(f"apikey: {exc}")
        return 2
    body: dict[str, Any] = {}
    if ns.action == "create":
        body = {"name": ns.name, "scopes": ns.scope.split()}
        for k in ("org", "user", "expires_in"):
            if getattr(ns, k) is not None:
                body[k] = getattr(ns, k)
        try:
            parse_key_request(body)
        except AdminError as exc:
            err(f"apikey create: --{exc.message.replace('_', '-')}")
            return 2
    try:
        if settings.redis_url:
            out = asyncio.run(_via_redis(settings, ns.action, body, getattr(ns, "id", None)))
        else:
            out = _via_admin(settings, ns.action, body, getattr(ns, "id", None))
    except _Failure as exc:
        err(f"apikey {ns.action}: {exc}")
        return exc.code
    print(orjson.dumps(out).decode())
    return 0


class _Failure(Exception):
    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.code = code


def _via_admin(settings: Any, action: str, body: dict[str, Any], key_id: str | None) -> Any:
    import http.client

    import orjson

    host = settings.admin_host if settings.admin_host not in ("0.0.0.0", "::") else "127.0.0.1"
    method, path = {"create": ("POST", "/keys"), "list": ("GET", "/keys"),
                    "revoke": ("DELETE", f"/keys/{key_id}")}[action]
    headers = {"Content-Type": "application/json", "Host": "localhost"}
    if method != "GET":
        if not settings.admin_token:
            raise _Failure("needs GATEWAY_ADMIN_TOKEN (admin writes), or GATEWAY_REDIS_URL to write the store", 2)
        headers["Authorization"] = f"Bearer {settings.admin_token}"
    conn = http.client.HTTPConnection(host, settings.admin_port, timeout=10)
    try:
        conn.request(method, path, body=orjson.dumps(body) if method == "POST" else None, headers=headers)
        resp = conn.getresponse()
        data = resp.read(1 << 22)
    except OSError as exc:
        raise _Failure(f"the gateway's admin API at {host}:{settings.admin_port} is unreachable "
                       f"({exc.strerror or exc}); is the gateway running? (GATEWAY_ADMIN_HOST/PORT)") from None
    finally:
        conn.close()
    try:
        out = orjson.loads(data)
    except orjson.JSONDecodeError:
        out = None
    if resp.status >= 300:
        msg = out.get("message") if isinstance(out, dict) else data[:200].decode("latin-1")
        raise _Failure(f"admin API answered {resp.status}: {msg}")
    return out["keys"] if action == "list" else out


async def _via_redis(settings: Any, action: str, body: dict[str, Any], key_id: str | None) -> Any:
    import os

    from gateway.state.redis_link import RedisLink, RedisUnavailable
    from gateway.state.redis_store import RedisStore

    from . import apikeys

    link = RedisLink(settings.redis_url, cluster=settings.redis_cluster, timeout=max(settings.redis_timeout, 2.0),
                     prefix=settings.redis_prefix)
    store = RedisStore(link, f"apikey-cli-{os.getpid()}", on_change=lambda v, k, val: None,
                       on_resync=lambda v, s: None)
    await link.start()
    try:
        if not await link.wait_up(5.0):
            raise _Failure(f"Redis at GATEWAY_REDIS_URL is unreachable ({link.down_reason})")
        version, state = await store.load()
        store.version = version        # our own write is then the next version: applied at once
        if action == "list":
            return [apikeys.public(v) for k, v in sorted(state.items()) if k.startswith(apikeys.PREFIX)]
        if action == "revoke":
            assert key_id is not None
            if not apikeys.valid_id(key_id) or apikeys.PREFIX + key_id not in state:
                raise _Failure(f"no API key {key_id[:64]!r}")
            await store.delete(apikeys.PREFIX + key_id)
            from .audit import audit

            audit("key_revoked", key_id=key_id, source="cli")
            return {"id": key_id, "revoked": True}
        key, record = apikeys.new_key(body["name"], body.get("user"), body.get("org"), body.get("scopes", []),
                                      body.get("expires_in"))
        await store.put(apikeys.PREFIX + record["id"], record)
        from .audit import audit

        audit("key_created", key_id=record["id"], source="cli", credential=apikeys.fingerprint(key))
        return {**apikeys.public(record), "key": key}
    except RedisUnavailable as exc:
        raise _Failure(f"Redis at GATEWAY_REDIS_URL failed: {exc}") from None
    finally:
        await link.close()
