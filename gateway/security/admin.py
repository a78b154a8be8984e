"""Admin routes of the security feature (SPEC §5, §8) and its metric.

  POST   /keys               {"name", "org"?, "user"?, "scopes"?: [..], "expires_in"?} → 201 {"id", "key", ...}
  GET    /keys               every key's public record (no hash, no salt, never the key)
  DELETE /keys/{id}          revoke: the record is deleted, every worker/instance refuses it within 1 s
  POST   /tokens/revoke      {"jti"} or {"token"} (+ optional "exp") → 200; kept until the token's expiry
  GET    /tokens/revoked     the revoked jtis with their expiry

Writes go through `state.control` (with Redis: persisted and published first; Redis down → 503
and nothing changed). The control-plane process also sweeps revocations whose tokens have expired.
Every write is audited (fingerprints only).
"""
from __future__ import annotations

import base64
import re
import time
import weakref
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from gateway.admin.api import AdminError, AdminRequest, AdminResponse, json_response

from . import apikeys, revocation
from .audit import audit
from .context import FAILURES_NAME, FAILURES_SIZE, METHODS, REASONS

if TYPE_CHECKING:
    from gateway.admin.api import AdminRoutes
    from gateway.admin.features import AdminContext, MetricSample

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._ -]{0,127}")
_SCOPE = re.compile(r"[!#-\[\]-~]{1,128}")
DEFAULT_REVOKE_RETENTION = 86400.0      # a bare jti without "exp": kept a day
MAX_EXPIRES_IN = 10 * 365 * 86400.0


def _field_text(body: dict[str, Any], name: str, *, required: bool = False, max_len: int = 256) -> str | None:
    v = body.get(name)
    if v is None:
        if required:
            raise AdminError(400, "bad_request", f"{name}: required")
        return None
    if not isinstance(v, str) or not 0 < len(v) <= max_len or not v.isprintable():
        raise AdminError(400, "bad_request", f"{name}: expected 1-{max_len} printable characters")
    return v


def _body(req: AdminRequest) -> dict[str, Any]:
    body = req.json()
    if body is None:
        return {}
    if not isinstance(body, dict):
        raise AdminError(400, "bad_request", "the body must be a JSON object")
    return body


async def _write(ctx: AdminContext, key: str, value: Any) -> None:
    from gateway.admin.changes import write_state

    await write_state(ctx, key, value)


def parse_key_request(body: dict[str, Any]) -> tuple[str, str | None, str | None, list[str], float | None]:
    unknown = set(body) - {"name", "org", "user", "scopes", "expires_in"}
    if unknown:
        raise AdminError(400, "bad_request", f"{sorted(unknown)[0]}: unknown field")
    name = _field_text(body, "name", required=True, max_len=128)
    assert name is not None
    if not _NAME.fullmatch(name):
        raise AdminError(400, "bad_request", "name: expected letters, digits, '.', '_', '-' or spaces (max 128)")
    org = _field_text(body, "org")
    user = _field_text(body, "user")
    scopes = body.get("scopes", [])
    if not isinstance(scopes, list) or len(scopes) > 256 or not all(
            isinstance(s, str) and _SCOPE.fullmatch(s) for s in scopes):
        raise AdminError(400, "bad_request", "scopes: expected an array of scopes (no spaces or quotes)")
    exp = body.get("expires_in")
    if exp is not None and (isinstance(exp, bool) or not isinstance(exp, int | float)
                            or not 0 < exp <= MAX_EXPIRES_IN):
        raise AdminError(400, "bad_request", f"expires_in: expected seconds in (0, {MAX_EXPIRES_IN:.0f}]")
    return name, org, user, list(dict.fromkeys(scopes)), float(exp) if exp is not None else None


def _unverified_claims(token: str) -> dict[str, Any]:
    """The claims of a token an admin hands in to revoke: read, not verified (the admin is trusted
    and an expired or foreign token may still need revoking); only jti and exp are used."""
    import orjson

    parts = token.split(".")
    if len(parts) != 3 or len(token) > 8192:
        raise AdminError(400, "bad_request", "token: expected a JWT (three base64url parts)")
    try:
        raw = base64.urlsafe_b64decode(parts[1] + "=" * (-len(parts[1]) % 4))
        claims = orjson.loads(raw)
    except (ValueError, orjson.JSONDecodeError):
        raise AdminError(400, "bad_request", "token: the payload is not base64url JSON") from None
    if not isinstance(claims, dict):
        raise AdminError(400, "bad_request", "token: the payload is not a JSON object")
    return claims


async def revoke(ctx: AdminContext, jti: str, exp: float, **audit_fields: Any) -> None:
    """Revoke `jti` until `exp` everywhere (also used by the token service)."""
    if not 0 < len(jti) <= 256 or not jti.isprintable():
        raise AdminError(400, "bad_request", "jti: expected 1-256 printable characters")
    view = ctx.state.view
    key = revocation.PREFIX + jti
    if view.get(key) is None and sum(1 for _ in view.items(revocation.PREFIX)) >= revocation.MAX_REVOKED:
        await sweep(ctx)
        if sum(1 for _ in view.items(revocation.PREFIX)) >= revocation.MAX_REVOKED:
            raise AdminError(503, "revocation_list_full",
                             f"{revocation.MAX_REVOKED} unexpired revocations are held; try again as they expire")
    await _write(ctx, key, {"exp": exp, "revoked_at": time.time()})
    audit("token_revoked", consumer=audit_fields.pop("consumer", None), jti=jti, exp=exp, **audit_fields)


async def sweep(ctx: AdminContext) -> int:
    """Delete revocations whose token has expired; returns how many."""
    from .token_service import FAMILY_PREFIX, sweep_keys

    now = time.time()
    keys = revocation.expired_keys(ctx.state.view.items(revocation.PREFIX), now)
    keys += sweep_keys(ctx.state.view.items(FAMILY_PREFIX), now)
    for k in keys:
        try:
            await _write(ctx, k, None)
        except AdminError:
            break                       # Redis down: the next sweep tries again
    return len(keys)


_swept: weakref.WeakSet[Any] = weakref.WeakSet()


def _start_sweeper(ctx: AdminContext) -> None:
    control = ctx.state.control
    if control is None or control in _swept:
        return
    _swept.add(control)                  # one sweeper per control plane, however many installs

    def tick() -> None:
        task = control.loop.create_task(sweep(ctx))
        task.add_done_callback(lambda t: t.cancelled() or t.exception())
        control.loop.call_later(revocation.SWEEP_EVERY, tick)

    control.loop.call_later(revocation.SWEEP_EVERY, tick)


def install(routes: AdminRoutes, ctx: AdminContext) -> None:
    from .audit import configure

    configure(ctx.settings.audit_log)
    _start_sweeper(ctx)
    from .token_service import start

    start(ctx)          # before the supervisor spawns its workers: they inherit its address

    async def create_key(req: AdminRequest) -> AdminResponse:
        name, org, user, scopes, expires_in = parse_key_request(_body(req))
        key, record = apikeys.new_key(name, user, org, scopes, expires_in)
        await _write(ctx, apikeys.PREFIX + record["id"], record)
        audit("key_created", consumer=user, key_id=record["id"], name=name, org=org, scopes=scopes,
              credential=apikeys.fingerprint(key))
        return json_response({**apikeys.public(record), "key": key}, 201)

    def list_keys(req: AdminRequest) -> AdminResponse:
        keys = [apikeys.public(v) for _, v in ctx.state.view.items(apikeys.PREFIX) if isinstance(v, dict)]
        return json_response({"keys": sorted(keys, key=lambda r: r.get("created") or 0)})

    async def delete_key(req: AdminRequest) -> AdminResponse:
        key_id = req.params["id"]
        if not apikeys.valid_id(key_id) or ctx.state.view.get(apikeys.PREFIX + key_id) is None:
            raise AdminError(404, "not_found", f"no API key {key_id!r}" if len(key_id) <= 64 else "no such API key")
        await _write(ctx, apikeys.PREFIX + key_id, None)
        audit("key_revoked", key_id=key_id)
        return json_response({"id": key_id, "revoked": True})

    async def revoke_token(req: AdminRequest) -> AdminResponse:
        body = _body(req)
        unknown = set(body) - {"jti", "token", "exp"}
        if unknown:
            raise AdminError(400, "bad_request", f"{sorted(unknown)[0]}: unknown field")
        exp = body.get("exp")
        if exp is not None and (isinstance(exp, bool) or not isinstance(exp, int | float)):
            raise AdminError(400, "bad_request", "exp: expected a number (unix seconds)")
        consumer = None
        if "token" in body:
            if not isinstance(body["token"], str):
                raise AdminError(400, "bad_request", "token: expected a string")
            claims = _unverified_claims(body["token"])
            jti = claims.get("jti")
            if not isinstance(jti, str):
                raise AdminError(400, "bad_request", "token: it has no jti (a string) to revoke")
            if exp is None and isinstance(claims.get("exp"), int | float):
                exp = claims["exp"]
            consumer = claims.get("sub") if isinstance(claims.get("sub"), str) else None
        elif "jti" in body:
            jti = body["jti"]
            if not isinstance(jti, str):
                raise AdminError(400, "bad_request", "jti: expected a string")
        else:
            raise AdminError(400, "bad_request", "jti or token: required")
        exp = float(exp) if exp is not None else time.time() + DEFAULT_REVOKE_RETENTION
        await revoke(ctx, jti, exp, consumer=consumer, source="admin")
        return json_response({"jti": jti, "exp": exp, "revoked": True})

    def list_revoked(req: AdminRequest) -> AdminResponse:
        out = [{"jti": k[len(revocation.PREFIX):], **(v if isinstance(v, dict) else {})}
               for k, v in ctx.state.view.items(revocation.PREFIX)]
        return json_response({"revoked": out})

    key_body = {"content": {"application/json": {"schema": {
        "type": "object", "required": ["name"], "properties": {
            "name": {"type": "string"}, "org": {"type": "string"}, "user": {"type": "string"},
            "scopes": {"type": "array", "items": {"type": "string"}}, "expires_in": {"type": "number"}}}}}}
    revoke_body = {"content": {"application/json": {"schema": {
        "type": "object", "properties": {"jti": {"type": "string"}, "token": {"type": "string"},
                                         "exp": {"type": "number"}}}}}}
    routes.add("POST", "/keys", create_key, summary="Create an API key (the key is shown once)", tag="security",
               request_body=key_body, responses={"201": {"description": "created: {id, key, ...}"},
                                                 "400": {"description": "bad field"},
                                                 "503": {"description": "state store unavailable"}})
    routes.add("GET", "/keys", list_keys, summary="List API keys (public records only)", tag="security")
    routes.add("DELETE", "/keys/{id}", delete_key, summary="Revoke an API key everywhere", tag="security",
               responses={"200": {"description": "revoked"}, "404": {"description": "no such key"}})
    routes.add("POST", "/tokens/revoke", revoke_token, summary="Revoke a JWT by jti or by the token",
               tag="security", request_body=revoke_body,
               responses={"200": {"description": "revoked"}, "400": {"description": "bad field"}})
    routes.add("GET", "/tokens/revoked", list_revoked, summary="Revoked JWT ids and their expiry", tag="security")


def failure_samples(ctx: AdminContext) -> Iterable[MetricSample]:
    """gateway_auth_failures_total{method,reason}: node totals from node memory."""
    from gateway._fast.counters import CounterArray

    counters = None
    rt = ctx.runtime()
    memory = ctx.state.memory
    if memory is not None:
        info = memory.info(FAILURES_NAME)
        if info is not None and not info.quarantined and info.size == FAILURES_SIZE:
            # The supervisor reads the bytes the workers placed (by name), without becoming a holder.
            counters = CounterArray(len(METHODS) * len(REASONS), memory._view, info.offset)
    if counters is None and rt is not None:
        from .context import _contexts

        sec = _contexts.get(ctx.state)
        counters = sec.failures if sec is not None else None
    help_ = "Requests refused by authentication or authorization, by credential method and reason"
    for mi, method in enumerate(METHODS):
        for ri, reason in enumerate(REASONS):
            value = counters[mi * len(REASONS) + ri] if counters is not None else 0
            yield ("gateway_auth_failures_total", "counter", help_, {"method": method, "reason": reason}, float(value))
