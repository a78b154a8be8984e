"""AuthFilter: a route's `auth` (any listed method admits) and `scopes` (all required).

Synchronous: every answer comes from memory (the token cache, the key ring, the revocation set);
the only I/O of this package, the JWKS fetch, runs in the background (jwks.py).

Credentials (SPEC §4, §8): a JWT only from `Authorization: Bearer` (scheme case-insensitive), an
API key from `X-API-Key` or `Authorization: ApiKey`; never from the query string or a cookie. More
than one Authorization or X-API-Key field is refused. Every refusal is the same 401 body and
`WWW-Authenticate` whatever the reason; the reason goes to the audit log and the
`gateway_auth_failures_total{method,reason}` counter only. API keys are removed from the request
before it goes upstream; the identity goes up in X-Consumer-Id/-Org/-Scopes/-Key-Id and
X-Auth-Method (client copies were removed by the data plane).
"""
from __future__ import annotations

import time
from typing import TYPE_CHECKING

from gateway.http.head import HeaderView, all_values
from gateway.pipeline.filter import Filter
from gateway.pipeline.reply import LocalReply

from .apikeys import fingerprint
from .audit import audit
from .auth_fast import CachedJwtAccess
from .context import CachedIdentity, SecurityContext
from .jwt_check import JwtRefused

if TYPE_CHECKING:
    from gateway.pipeline.context import RequestContext

_BEARER = b"bearer "
_APIKEY = b"apikey "


def _is_apikey(authorization: bytes) -> bool:
    return authorization[:7].lower() == _APIKEY
_UNAUTHORIZED_MESSAGE = "Missing or invalid credentials."


class AuthFilter(Filter):
    name = "auth"

    def __init__(self, route: str, methods: tuple[str, ...], scopes: tuple[str, ...],
                 security: SecurityContext) -> None:
        self.route = route
        self.jwt = "jwt" in methods
        self.api_key = "api_key" in methods
        self.first_method = methods[0]
        self.required = frozenset(scopes)
        self.sec = security
        challenge = []
        if self.jwt:
            challenge.append((b"WWW-Authenticate", b'Bearer error="invalid_token"'))
        if self.api_key:
            challenge.append((b"WWW-Authenticate", b'ApiKey realm="gateway"'))
        self.unauthorized = LocalReply(401, "unauthorized", _UNAUTHORIZED_MESSAGE, headers=challenge)
        shown = " ".join(sorted(self.required)).encode()
        self.forbidden_jwt = LocalReply(403, "forbidden", "The credential lacks a required scope.", headers=[
            (b"WWW-Authenticate", b'Bearer error="insufficient_scope", scope="%s"' % shown)])
        self.forbidden_key = LocalReply(403, "forbidden", "The credential lacks a required scope.")
        self.unavailable = LocalReply(503, "auth_unavailable",
                                      "The credential store is unavailable; try again shortly.",
                                      headers=[(b"Retry-After", b"1")])
        if self.jwt:
            # A cached token's identity, compiled (auth_fast.pyx); it hands everything else
            # (a new token, API keys, refusals) to python_access.
            self.access = CachedJwtAccess(self, security, self.required)  # type: ignore[method-assign]

    def access(self, ctx: RequestContext) -> LocalReply | None:
        return self.python_access(ctx)

    def python_access(self, ctx: RequestContext) -> LocalReply | None:
        authzs = all_values(ctx.headers, b"authorization")
        keys = all_values(ctx.headers, b"x-api-key")
        n_authz = len(authzs)
        n_key = len(keys)
        authz = authzs[-1] if authzs else None
        key = keys[-1] if keys else None
        if n_authz > 1 or n_key > 1:
            return self._refuse(ctx, "api_key" if n_key > 1 else self.first_method, "malformed", None)
        if authz is not None:
            scheme = authz[:7].lower()
            if scheme == _BEARER and self.jwt:
                return self._jwt(ctx, authz[7:].strip())
            if scheme == _APIKEY and self.api_key:
                return self._key(ctx, authz[7:].strip())
        if key is not None and self.api_key:
            return self._key(ctx, key.strip())
        if authz is not None:
            # A scheme this route does not take (Basic, or Bearer on an api_key-only route).
            return self._refuse(ctx, self.first_method, "missing", None)
        return self._refuse(ctx, self.first_method, "missing", None)

    # --- JWT ------------------------------------------------------------------------------------------
    def _jwt(self, ctx: RequestContext, token: bytes) -> LocalReply | None:
        sec = self.sec
        now = time.time()
        ident = sec.cached(token)
        if ident is None or ident.until <= now:
            checker = sec.checker
            if checker is None:
                return self._refuse(ctx, "jwt", "unknown_key", token)
            try:
                claims = checker.verify(token, now)
            except JwtRefused as exc:
                return self._refuse(ctx, "jwt", exc.reason, token)
            if claims.kind == "refresh":
                return self._refuse(ctx, "jwt", "bad_claims", token)   # never an access token
            if claims.jti is not None and claims.jti in sec.revocations:
                audit("revoked_token", request_id=ctx.request_id, client_ip=ctx.client_ip,
                      consumer=claims.sub, route=self.route, jti=claims.jti)
                return self._refuse(ctx, "jwt", "revoked", token)
            ident = CachedIdentity(claims.sub, claims.org, claims.scopes, claims.exp + checker.leeway,
                                   claims.jti, "jwt", claims.kid)
            sec.cache_put(token, ident)
        ctx.consumer_id = ident.sub
        ctx.consumer_org = ident.org
        ctx.scopes = ident.scopes
        ctx.auth_method = "jwt"
        if self.required and not self.required <= ident.scopes:
            return self._forbidden(ctx, "jwt", self.forbidden_jwt)
        ctx.upstream_headers = ctx.upstream_headers + ident.headers
        return None

    # --- API keys -------------------------------------------------------------------------------------
    def _key(self, ctx: RequestContext, raw: bytes) -> LocalReply | None:
        sec = self.sec
        try:
            key = raw.decode("ascii")
        except UnicodeDecodeError:
            return self._refuse(ctx, "api_key", "malformed", raw)
        entry, reason = sec.keyring.check(key, time.time())
        if entry is None:
            if reason == "unknown_id":
                if sec.redis_down():
                    # Maybe created on another instance while this one lost Redis: not checkable.
                    audit("auth_unavailable", request_id=ctx.request_id, client_ip=ctx.client_ip,
                          consumer=None, route=self.route, credential=fingerprint(raw))
                    return self.unavailable
                reason = "unknown_key"
            return self._refuse(ctx, "api_key", reason, raw)
        # API keys are never forwarded (SPEC §4).
        headers = ctx.headers
        if isinstance(headers, HeaderView):
            headers.remove(b"x-api-key")
            headers.remove_if(b"authorization", _is_apikey)
        else:
            ctx.headers = [h for h in headers if h[0] != b"x-api-key" and not (
                h[0] == b"authorization" and _is_apikey(h[1]))]
        ctx.consumer_id = entry.user
        ctx.consumer_org = entry.org
        ctx.scopes = entry.scopes
        ctx.auth_method = "api_key"
        ctx.api_key_id = entry.id
        if self.required and not self.required <= entry.scopes:
            return self._forbidden(ctx, "api_key", self.forbidden_key)
        ctx.upstream_headers = ctx.upstream_headers + entry.headers
        return None

    # --- refusals -------------------------------------------------------------------------------------
    def _refuse(self, ctx: RequestContext, method: str, reason: str, credential: bytes | None) -> LocalReply:
        self.sec.failed(method, reason, time.monotonic())
        audit("auth_failure", request_id=ctx.request_id, client_ip=ctx.client_ip, consumer=None,
              route=self.route, method=method, reason=reason,
              credential=fingerprint(credential) if credential else None)
        return self.unauthorized

    def _forbidden(self, ctx: RequestContext, method: str, reply: LocalReply) -> LocalReply:
        self.sec.failed(method, "insufficient_scope", time.monotonic())
        audit("auth_failure", request_id=ctx.request_id, client_ip=ctx.client_ip, consumer=ctx.consumer_id,
              route=self.route, method=method, reason="insufficient_scope")
        return reply
