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
