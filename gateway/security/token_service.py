"""The gateway's own token service (SPEC §4, §8): POST /auth/token, /auth/refresh, /auth/revoke.

Where it runs: in the process that owns the control plane (the supervisor, or the only process
with GATEWAY_WORKERS=1), on a loopback port of its own. The data plane reaches it as an internal
upstream: every runtime gets three exact POST routes (`=/auth/token`, ...) whose service is that
port. Why there and not in each worker: issuing and rotating tokens writes the dynamic state
(refresh families, revocations), and only that process can write it (`state.control`); it also
serializes rotations of one family on a node, so two workers can never both accept the same
refresh token. Requests reach it through the data plane like any upstream request (framing
checks, body limits, access log, request id), and its answers are small JSON bodies.

Tokens (HS256 with GATEWAY_JWT_SECRET; iss/aud from GATEWAY_JWT_ISSUER/AUDIENCE):
- access: sub, org claim, scope, jti, exp = now + ACCESS_TTL.
- refresh: the same identity, `typ: "refresh"`, `fam` (family id), its own jti, exp = now +
  REFRESH_TTL. A refresh token is never accepted as an access token (auth_filter refuses typ
  "refresh").
- `refresh/<fam>` = {"current": jti, "exp", "key_id", "access": [[jti, exp], ...]} in the state.
  /auth/refresh with the current jti rotates (new refresh jti, new access token); with any other jti
  of the family it is a reuse: the family record is deleted and its recent access tokens revoked,
  so a stolen refresh token is worth one use at most, by whoever comes first.
"""
from __future__ import annotations

import asyncio
import logging
import os
import secrets
import socket
import time
from typing import TYPE_CHECKING, Any

import orjson

from . import apikeys
from .audit import audit
from .jwt_check import JwtRefused

if TYPE_CHECKING:
    from gateway.admin.features import AdminContext

log = logging.getLogger("gateway.security")

ADDRESS_ENV = "_GATEWAY_TOKEN_SERVICE"     # host:port, set by the control-plane process for workers
PATHS = ("/auth/token", "/auth/refresh", "/auth/revoke")
ACCESS_TTL = 900.0
REFRESH_TTL = 30 * 86400.0
FAMILY_PREFIX = "refresh/"
MAX_BODY = 16 << 10
MAX_HEAD = 16 << 10
KEEP_ACCESS = 16                  # access jtis remembered per family (revoked on reuse)
MAX_CONNECTIONS = 256             # the workers' pools need a few each; a local peer gets no more
IDLE_TIMEOUT = 75.0               # seconds without a byte in either direction → closed
MAX_UNREAD = 256 << 10            # answers queued for a peer that does not read → closed

_address: str | None = None       # this process's own service, when it runs here


def address(state: Any = None) -> str | None:
    """host:port of the node's token service, or None when it does not run: this process's own
    (the control-plane process), else the one the supervisor named in ADDRESS_ENV."""
    if state is not None and state.control is not None:
        return _address
    return _address or os.environ.get(ADDRESS_ENV) or None


class TokenService:
    def __init__(self, ctx: AdminContext) -> None:
        from .context import build_checker

        self.ctx = ctx
        self.settings = ctx.settings
        self.checker, _ = build_checker(ctx.settings)
        self.keyring = apikeys.KeyRing()
        ctx.state.view.subscribe(apikeys.PREFIX, self.keyring.on_change)
        self._lock = asyncio.Lock()     # one rotation at a time on this node

    # --- the three endpoints: (status, body) ----------------------------------------------------
    async def handle(self, path: str, headers: dict[bytes, bytes], body: bytes,
                     request_id: str | None) -> tuple[int, dict[str, Any]]:
        from gateway.admin.api import AdminError

        try:
            if path == "/auth/token":
                return await self.token(headers, body, request_id)
            data = orjson.loads(body) if body.strip() else {}
            if not isinstance(data, dict):
                return 400, _err("bad_request", "The body must be a JSON object.", request_id)
            if path == "/auth/refresh":
                return await self.refresh(data, request_id)
            if path == "/auth/revoke":
                return await self.revoke(data, request_id)
            return 404, _err("not_found", "No such endpoint.", request_id)
        except orjson.JSONDecodeError:
            return 400, _err("bad_request", "The body is not valid JSON.", request_id)
        except AdminError as exc:
            return exc.status, _err(exc.code, exc.message, request_id)

    async def token(self, headers: dict[bytes, bytes], body: bytes, request_id: str | None) -> tuple[int, dict[str, Any]]:
        key = headers.get(b"x-api-key")
        authz = headers.get(b"authorization", b"")
        if key is None and authz[:7].lower() == b"apikey ":
            key = authz[7:]
        if key is None:
            return self._unauthorized("missing", request_id)
        if body.strip() not in (b"", b"{}"):
            return 400, _err("bad_request", "The body must be {} or empty.", request_id)
        entry, reason = self.keyring.check(key.strip().decode("ascii", "replace"), time.time())
        if entry is None:
            return self._unauthorized("unknown_key" if reason == "unknown_id" else reason, request_id,
                                      credential=apikeys.fingerprint(key))
        fam = secrets.token_hex(12)
        async with self._lock:
            return await self._issue(entry.user, entry.org, entry.scopes, entry.id, fam, None, request_id)

    async def refresh(self, data: dict[str, Any], request_id: str | None) -> tuple[int, dict[str, Any]]:
        tok = data.get("refresh_token")
        if not isinstance(tok, str):
            return 400, _err("bad_request", "refresh_token: required (a string).", request_id)
        claims = self._verify_refresh(tok)
        if claims is None:
            return self._unauthorized("bad_claims", request_id, credential=apikeys.fingerprint(tok))
        fam, jti = claims["fam"], claims["jti"]
        async with self._lock:
            record = self.ctx.state.view.get(FAMILY_PREFIX + fam)
            if not isinstance(record, dict):
                return self._unauthorized("revoked", request_id, credential=apikeys.fingerprint(tok))
            if record.get("current") != jti:
                await self._revoke_family(fam, record, request_id, reason="refresh_token_reuse")
                return self._unauthorized("revoked", request_id, credential=apikeys.fingerprint(tok))
            key_id = record.get("key_id")
            if key_id and self.ctx.state.view.get(apikeys.PREFIX + key_id) is None:
                await self._revoke_family(fam, record, request_id, reason="api_key_revoked")
                return self._unauthorized("revoked", request_id)
            scopes = frozenset(claims.get("scope", "").split())
            return await self._issue(claims["sub"], claims.get(self.settings.jwt_org_claim), scopes, key_id,
                                     fam, record, request_id)

    async def revoke(self, data: dict[str, Any], request_id: str | None) -> tuple[int, dict[str, Any]]:
        from .admin import revoke as revoke_jti

        tok = data.get("token")
        if not isinstance(tok, str):
            return 400, _err("bad_request", "token: required (a string).", request_id)
        claims = self._verify_any(tok)
        if claims is not None:      # RFC 7009 §2.2: an invalid token is answered 200 as well
            async with self._lock:
                if claims.get("typ") == "refresh" and isinstance(claims.get("fam"), str):
                    record = self.ctx.state.view.get(FAMILY_PREFIX + claims["fam"])
                    if isinstance(record, dict):
                        await self._revoke_family(claims["fam"], record, request_id, reason="revoked_by_client")
                elif isinstance(claims.get("jti"), str):
                    await revoke_jti(self.ctx, claims["jti"], float(claims["exp"]), consumer=claims.get("sub"),
                                     source="auth_revoke", request_id=request_id)
        return 200, {"revoked": True}

    # --- internals ----------------------------------------------------------------------------------
    async def _issue(self, sub: str, org: str | None, scopes: frozenset[str], key_id: str | None, fam: str,
                     record: dict[str, Any] | None, request_id: str | None) -> tuple[int, dict[str, Any]]:
        from .admin import _write
        from .commands import mint_token

        now = time.time()
        scope = " ".join(sorted(scopes))
        access_jti = secrets.token_hex(12)
        refresh_jti = secrets.token_hex(12)
        access = mint_token(self.settings, sub, org, scope, ACCESS_TTL, jti=access_jti, now=now)
        refresh_tok = self._mint_refresh(sub, org, scope, fam, refresh_jti, now)
        recent = list((record or {}).get("access", []))[-(KEEP_ACCESS - 1):] + [[access_jti, now + ACCESS_TTL]]
        await _write(self.ctx, FAMILY_PREFIX + fam, {
            "current": refresh_jti, "exp": now + REFRESH_TTL, "key_id": key_id, "sub": sub, "access": recent})
        audit("token_issued", request_id=request_id, consumer=sub, key_id=key_id, family=fam, jti=access_jti,
              rotated=record is not None)
        return 200, {"access_token": access, "refresh_token": refresh_tok, "token_type": "Bearer",
                     "expires_in": int(ACCESS_TTL)}

    def _mint_refresh(self, sub: str, org: str | None, scope: str, fam: str, jti: str, now: float) -> str:
        import jwt

        from .jwt_check import HS

        s = self.settings
        claims: dict[str, Any] = {"sub": sub, "iat": int(now), "exp": int(now + REFRESH_TTL), "jti": jti,
                                  "typ": "refresh", "fam": fam, "scope": scope}
        if org:
            claims[s.jwt_org_claim] = org
        if s.jwt_issuer:
            claims["iss"] = s.jwt_issuer
        if s.jwt_audience:
            claims["aud"] = s.jwt_audience
        alg = next((a for a in (s.jwt_algorithms or HS) if a in HS), "HS256")
        return jwt.encode(claims, s.jwt_secret or "", algorithm=alg)

    def _verify_any(self, tok: str) -> dict[str, Any] | None:
        """Signature and expiry checked by the gateway's own checker; the claims as a dict."""
        if self.checker is None:
            return None
        try:
            self.checker.verify(tok.encode(), time.time())
        except (JwtRefused, UnicodeEncodeError):
            return None
        import base64

        payload = tok.split(".")[1]
        return dict(orjson.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4))))

    def _verify_refresh(self, tok: str) -> dict[str, Any] | None:
        claims = self._verify_any(tok)
        if claims is None or claims.get("typ") != "refresh" or not isinstance(claims.get("fam"), str) \
                or not isinstance(claims.get("jti"), str):
            return None
        return claims

    async def _revoke_family(self, fam: str, record: dict[str, Any], request_id: str | None, *, reason: str) -> None:
        from .admin import _write
        from .admin import revoke as revoke_jti

        await _write(self.ctx, FAMILY_PREFIX + fam, None)
        now = time.time()
        for jti, exp in record.get("access", []):
            if isinstance(jti, str) and isinstance(exp, int | float) and exp > now:
                await revoke_jti(self.ctx, jti, float(exp), consumer=record.get("sub"), source=reason)
        audit("token_family_revoked", request_id=request_id, consumer=record.get("sub"), family=fam, reason=reason)

    def _unauthorized(self, reason: str, request_id: str | None, credential: str | None = None) -> tuple[int, dict[str, Any]]:
        audit("auth_failure", request_id=request_id, consumer=None, route="token-service", method="api_key",
              reason=reason, credential=credential)
        return 401, _err("unauthorized", "Missing or invalid credentials.", request_id)


def _err(code: str, message: str, request_id: str | None) -> dict[str, Any]:
    return {"error": code, "message": message, "request_id": request_id}


class _Connection(asyncio.Protocol):
    """One keep-alive connection from a worker's upstream pool: requests in order, bounded."""

    open_connections = 0

    def __init__(self, service: TokenService) -> None:
        import httptools

        self.service = service
        self.timer: asyncio.TimerHandle | None = None
        self.parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None
        self.queue: list[tuple[str, dict[bytes, bytes], bytes, bool]] = []
        self.busy = False
        self._reset()

    def _reset(self) -> None:
        self.url = b""
        self.headers: dict[bytes, bytes] = {}
        self.body = bytearray()
        self.head = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        _Connection.open_connections += 1
        if _Connection.open_connections > MAX_CONNECTIONS:
            self._close()
            return
        self._touch()

    def connection_lost(self, exc: Exception | None) -> None:
        _Connection.open_connections -= 1
        if self.timer is not None:
            self.timer.cancel()
        self.transport = None

    def _touch(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
        self.timer = asyncio.get_running_loop().call_later(IDLE_TIMEOUT, self._close)

    def data_received(self, data: bytes) -> None:
        import httptools

        self._touch()
        try:
            self.parser.feed_data(data)
        except (httptools.HttpParserError, ValueError):
            self._close()

    def on_url(self, url: bytes) -> None:
        self.url += url
        if len(self.url) > MAX_HEAD:
            raise ValueError("target too long")

    def on_header(self, name: bytes, value: bytes) -> None:
        self.head += len(name) + len(value)
        if self.head > MAX_HEAD or len(self.headers) > 100:
            raise ValueError("head too large")
        self.headers[name.lower()] = value

    def on_body(self, body: bytes) -> None:
        self.body += body
        if len(self.body) > MAX_BODY:
            raise ValueError("body too large")

    def on_message_complete(self) -> None:
        path = self.url.split(b"?", 1)[0].decode("latin-1")
        if len(self.queue) >= 16:
            raise ValueError("too many pipelined requests")
        self.queue.append((path, self.headers, bytes(self.body), self.parser.should_keep_alive()))
        self._reset()
        if not self.busy:
            asyncio.get_running_loop().create_task(self._serve())

    async def _serve(self) -> None:
        self.busy = True
        try:
            while self.queue and self.transport is not None and not self.transport.is_closing():
                path, headers, body, keep = self.queue.pop(0)
                rid = headers.get(b"x-request-id", b"").decode("latin-1") or None
                try:
                    status, out = await self.service.handle(path, headers, body, rid)
                except Exception:  # noqa: BLE001 - a bug must answer 500, not hang the client
                    log.exception("token service failed")
                    status, out = 500, _err("internal_error", "The token service failed.", rid)
                data = orjson.dumps(out)
                head = (f"HTTP/1.1 {status} {'OK' if status == 200 else 'Error'}\r\n"
                        f"Content-Type: application/json\r\nCache-Control: no-store\r\n"
                        f"Content-Length: {len(data)}\r\n{'' if keep else 'Connection: close' + chr(13) + chr(10)}"
                        f"\r\n").encode()
                self.transport.write(head + data)
                self._touch()
                if not keep or self.transport.get_write_buffer_size() > MAX_UNREAD:
                    self._close()
        finally:
            self.busy = False

    def _close(self) -> None:
        if self.transport is not None:
            self.transport.close()


def start(ctx: AdminContext) -> str | None:
    """Start the node's token service in this (control-plane) process; returns host:port.
    Needs GATEWAY_JWT_SECRET and an HS algorithm allowed; None otherwise."""
    global _address
    from .jwt_check import HS

    s = ctx.settings
    control = ctx.state.control
    if control is None or not s.jwt_secret or (s.jwt_algorithms and not any(a in HS for a in s.jwt_algorithms)):
        return None
    if _address is not None:
        return _address
    service = TokenService(ctx)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    sock.listen(128)
    sock.setblocking(False)
    control.loop.create_task(control.loop.create_server(lambda: _Connection(service), sock=sock))
    _address = f"127.0.0.1:{sock.getsockname()[1]}"
    if ctx.runtime() is None:
        os.environ[ADDRESS_ENV] = _address    # the supervisor: the workers it spawns inherit it
    log.info("token service on %s (POST %s)", _address, ", ".join(PATHS))
    return _address


def sweep_keys(items: Any, now: float) -> list[str]:
    """Expired refresh families (for the revocation sweeper)."""
    return [k for k, v in items if not isinstance(v, dict) or not isinstance(v.get("exp"), int | float)
            or v["exp"] < now]



def internal_routes(settings: Any, state: Any, config: Any, pool_for: Any) -> list[Any]:
    """The exact POST routes that carry /auth/* to the node's token service (empty when it does
    not run). In the lone process the service starts here, before its first runtime serves."""
    from gateway.config.model import RouteConfig, TargetConfig
    from gateway.discovery.service import Service, Target
    from gateway.pipeline.chain import EMPTY_CHAIN
    from gateway.routing import Route

    addr = address(state)
    if addr is None and state is not None and state.control is not None:
        from gateway.admin.features import AdminContext

        addr = start(AdminContext(settings, lambda: config, state, runtime=lambda: True))
    if addr is None:
        return []
    host, port = addr.rsplit(":", 1)
    tc = TargetConfig(url=f"http://{addr}", host=host, port=int(port))
    service = Service("gateway-token-service", [Target.from_config(tc, pool_for(host, int(port)))])
    out = []
    for i, path in enumerate(PATHS):
        rc = RouteConfig(name="gateway-" + path.strip("/").replace("/", "-"), service=service.name, path=path,
                         exact=True, methods=("POST",), index=-len(PATHS) + i)
        out.append(Route.from_config(rc, service, EMPTY_CHAIN))
    return out
