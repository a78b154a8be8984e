"""One JWT, parsed and verified: the refusals of SPEC §4 and issue 11, then PyJWT's signature check.

PyJWT's `jwt.decode` would take the algorithm list, but it parses the claims with a JSON decoder
that keeps the last of duplicate keys, accepts `crit`, and lets `exp` be any number-like value.
So the token is split and decoded here (strict base64url, duplicate keys refused, every field
typed), and only the signature goes to PyJWT's algorithm objects, with a key prepared once at
start for exactly one algorithm family: the algorithm comes from the configured allow-list and the
key's type, never from the token (a token naming HS256 against an RSA public key finds no key).

`verify()` raises JwtRefused(reason) with a SPEC §6 reason label; the reason goes to the audit log
and the metric only, never to the client.
"""
from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Callable
from typing import Any

MAX_TOKEN = 8192                  # bytes: longer tokens are refused before any decoding
MAX_SAFE = 2 ** 53                # exp/nbf/iat must be JSON numbers below this

HS = ("HS256", "HS384", "HS512")
ASYMMETRIC = ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA")

# Header fields that would make the token choose its own key or demand processing we do not do.
_FORBIDDEN_HEADER = ("crit", "jku", "jwk", "x5u", "x5c")
_B64URL = re.compile(rb"[A-Za-z0-9_-]*")


class JwtRefused(Exception):
    """A refused token; `reason` is one of SPEC §6's reason labels."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def _b64(part: bytes) -> bytes:
    # Strict base64url without padding: '=' and characters outside the alphabet are malformed, and
    # so is a length no encoder produces (len % 4 == 1).
    if not _B64URL.fullmatch(part) or len(part) % 4 == 1:
        raise JwtRefused("malformed")
    try:
        return base64.urlsafe_b64decode(part + b"=" * (-len(part) % 4))
    except (binascii.Error, ValueError):
        raise JwtRefused("malformed") from None


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in pairs:
        if k in out:
            raise JwtRefused("malformed")
        out[k] = v
    return out


def _reject_constant(_: str) -> Any:
    raise JwtRefused("malformed")      # NaN / Infinity are not JSON


_decoder = json.JSONDecoder(object_pairs_hook=_no_duplicates, parse_constant=_reject_constant)


def _json_object(raw: bytes) -> dict[str, Any]:
    try:
        value = _decoder.decode(raw.decode("utf-8"))
    except JwtRefused:
        raise
    except (ValueError, RecursionError):
        raise JwtRefused("malformed") from None
    if not isinstance(value, dict):
        raise JwtRefused("malformed")
    return value


def _number(value: Any) -> bool:
    return (isinstance(value, int | float) and not isinstance(value, bool)
            and -MAX_SAFE < value < MAX_SAFE)


def _printable(value: str) -> bool:
    # Values that go upstream in X-Consumer-* headers: no control characters, bounded.
    return 0 < len(value) <= 256 and value.isprintable()


def scopes_of(claims: dict[str, Any]) -> frozenset[str] | None:
    """SPEC §3: `scope` (space-separated) or `scp` / `scopes` (list). None: malformed."""
    raw = claims.get("scope")
    if raw is not None:
        if not isinstance(raw, str):
            return None
        items = raw.split()
    else:
        raw = claims.get("scp", claims.get("scopes"))
        if raw is None:
            return frozenset()
        if isinstance(raw, str):
            items = raw.split()
        elif isinstance(raw, list) and all(isinstance(s, str) for s in raw):
            items = raw
        else:
            return None
    if len(items) > 256 or not all(s and _printable(s) and " " not in s for s in items):
        return None
    return frozenset(items)


class Claims:
    """What a verified token tells: identity, expiry, jti."""

    __slots__ = ("sub", "org", "scopes", "exp", "jti", "kind", "kid")

    def __init__(self, sub: str, org: str | None, scopes: frozenset[str], exp: float,
                 jti: str | None, kind: str | None, kid: str | None = None) -> None:
        self.sub = sub
        self.org = org
        self.scopes = scopes
        self.exp = exp
        self.jti = jti
        self.kind = kind          # the gateway's own "typ" claim: "refresh" for refresh tokens
        self.kid = kid            # the header's key id (a JWKS key that disappears drops cached tokens)


KeyLookup = Callable[[str, str | None], Any]     # (alg, kid) → prepared key, or None


class JwtChecker:
    """Verifies tokens against an algorithm allow-list and a key lookup.

    keys(alg, kid) returns the PyJWT-prepared key usable with `alg`, or None (unknown_key): the
    static secret / PEM key answers for its own family only; the JWKS set answers by kid and kty.
    """

    def __init__(self, algorithms: tuple[str, ...], keys: KeyLookup, *, issuer: str | None = None,
                 audience: str | None = None, leeway: float = 30.0, org_claim: str = "org",
                 on_unknown_kid: Callable[[str | None], None] | None = None) -> None:
        import jwt

        self.algorithms = frozenset(algorithms)
        self._alg = {a: jwt.get_algorithm_by_name(a) for a in algorithms}
        self.keys = keys
        self.issuer = issuer
        self.audience = audience
        self.leeway = leeway
        self.org_claim = org_claim
        self.on_unknown_kid = on_unknown_kid

    def verify(self, token: bytes, now: float) -> Claims:
        if len(token) > MAX_TOKEN:
            raise JwtRefused("malformed")
        parts = token.split(b".")
        if len(parts) != 3 or not parts[0] or not parts[1] or not parts[2]:
            raise JwtRefused("malformed")
        header = _json_object(_b64(parts[0]))
        payload = _b64(parts[1])
        signature = _b64(parts[2])
        alg = header.get("alg")
        if not isinstance(alg, str) or any(f in header for f in _FORBIDDEN_HEADER):
            raise JwtRefused("malformed")
        if alg not in self.algorithms:
            # alg "none", HS256 against an RSA key (the confusion attack), anything not allowed.
            raise JwtRefused("bad_signature")
        kid = header.get("kid")
        if kid is not None and (not isinstance(kid, str) or len(kid) > 256):
            raise JwtRefused("malformed")
        key = self.keys(alg, kid)
        if key is None:
            if self.on_unknown_kid is not None:
                self.on_unknown_kid(kid)
            raise JwtRefused("unknown_key")
        claims = _json_object(payload)      # parsed before the signature: duplicates are refused
        try:
            ok = self._alg[alg].verify(parts[0] + b"." + parts[1], key, signature)
        except Exception:  # noqa: BLE001 - a malformed signature (bad DER, wrong length) is no signature
            ok = False
        if not ok:
            raise JwtRefused("bad_signature")
        out = self._claims(claims, now)
        out.kid = kid
        return out

    def _claims(self, c: dict[str, Any], now: float) -> Claims:
        exp = c.get("exp")
        if exp is None or not _number(exp):
            raise JwtRefused("bad_claims")
        for name in ("nbf", "iat"):
            if name in c and not _number(c[name]):
                raise JwtRefused("bad_claims")
        sub = c.get("sub")
        if not isinstance(sub, str) or not _printable(sub):
            raise JwtRefused("bad_claims")
        jti = c.get("jti")
        if jti is not None and (not isinstance(jti, str) or not _printable(jti)):
            raise JwtRefused("bad_claims")
        if self.issuer is not None and c.get("iss") != self.issuer:
            raise JwtRefused("bad_claims")
        if self.audience is not None:
            aud = c.get("aud")
            if not (aud == self.audience or (isinstance(aud, list) and self.audience in aud)):
                raise JwtRefused("bad_claims")
        org = c.get(self.org_claim)
        if org is not None and (not isinstance(org, str) or not _printable(org)):
            raise JwtRefused("bad_claims")
        scopes = scopes_of(c)
        if scopes is None:
            raise JwtRefused("bad_claims")
        kind = c.get("typ")
        if kind is not None and not isinstance(kind, str):
            raise JwtRefused("bad_claims")
        if exp + self.leeway <= now:
            raise JwtRefused("expired")
        if "nbf" in c and c["nbf"] - self.leeway > now:
            raise JwtRefused("not_yet_valid")
        if "iat" in c and c["iat"] - self.leeway > now:
            raise JwtRefused("not_yet_valid")
        return Claims(sub, org, scopes, float(exp), jti, kind)
