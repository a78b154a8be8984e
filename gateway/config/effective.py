"""What is in force, as data: `gateway check --dump` prints it, admin `GET /config` serves it.

`effective(settings, config)` is one JSON-able dict: the version, the file, every variable as
`Settings.masked()` shows it (secrets `<set, hidden>`, URL passwords `***`), and the TOML file's
services, routes and quotas with every default filled in, under the TOML's own key names. The TOML
holds no secret (targets are `http://host:port` only; credentials never appear in it), so nothing
there is masked; the variables are the only place a secret can be.

`to_toml()` writes the file part back as TOML: what `--dump` prints reads back (loads_config) to the
same services and routes (tests/integration/test_cli_ops.py checks the round trip).
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .keys import toml_value

if TYPE_CHECKING:
    from .env import Settings
    from .model import GatewayConfig, QuotaLimit, RouteConfig, ServiceConfig


def _service(s: ServiceConfig) -> dict[str, Any]:
    out: dict[str, Any] = {"name": s.name, "balancer": s.balancer}
    if s.hash_key is not None:
        out["hash_key"] = s.hash_key
    out["targets"] = [{"url": t.url, "weight": t.weight, **({"version": t.version} if t.version else {})}
                      for t in s.targets]
    if s.health is not None:
        h = s.health
        out["health"] = {"path": h.path, "interval": h.interval, "timeout": h.timeout,
                         "healthy_threshold": h.healthy_threshold, "unhealthy_threshold": h.unhealthy_threshold,
                         "max_backoff": h.max_backoff}
    if s.breaker is not None:
        b = s.breaker
        out["breaker"] = {"failure_threshold": b.failure_threshold, "error_rate": b.error_rate,
                          "min_requests": b.min_requests, "window": b.window, "open_timeout": b.open_timeout,
                          "half_open_requests": b.half_open_requests, "success_threshold": b.success_threshold}
        if b.failure_statuses is not None:
            out["breaker"]["failure_statuses"] = list(b.failure_statuses)
    return out


def route_dict(r: RouteConfig) -> dict[str, Any]:
    """A route under its TOML keys, defaults filled in (`timeout` null: GATEWAY_UPSTREAM_TIMEOUT)."""
    out: dict[str, Any] = {"name": r.name, "path": ("=" if r.exact else "") + r.path, "service": r.service}
    if r.host is not None:
        out["host"] = r.host
    out["methods"] = list(r.methods) if r.methods is not None else None
    out.update(strip_prefix=r.strip_prefix, timeout=r.timeout, retries=r.retries, websocket=r.websocket,
               auth=list(r.auth), scopes=list(r.scopes),
               content_types=list(r.content_types) if r.content_types is not None else None,
               security_headers=r.security_headers)
    if r.canary is not None:
        out["canary"] = {"version": r.canary.version, "weight": r.canary.weight,
                         **({"header": r.canary.header} if r.canary.header else {})}
    if r.fallback is not None:
        f = r.fallback
        out["fallback"] = {"status": f.status}
        if f.body is not None:
            out["fallback"].update(body=f.body.decode("utf-8"), content_type=f.content_type)
    out["rate_limits"] = [p.as_dict() for p in r.rate_limits]
    return out


def _quotas(config: GatewayConfig) -> dict[str, Any] | None:
    q = config.quotas
    if q is None:
        return None

    def one(limit: QuotaLimit | None) -> dict[str, object] | None:
        return None if limit is None else limit.as_dict()

    return {"default_user": one(q.default_user), "default_org": one(q.default_org),
            "orgs": {k: v.as_dict() for k, v in sorted(q.orgs.items())},
            "users": {k: v.as_dict() for k, v in sorted(q.users.items())}}


def effective(settings: Settings, config: GatewayConfig) -> dict[str, Any]:
    from gateway import __version__

    return {
        "version": __version__,
        "config_file": settings.config,
        "environment": settings.masked(),
        "services": [_service(s) for s in config.services],
        "routes": [route_dict(r) for r in config.routes],
        "quotas": _quotas(config),
    }


# --- TOML --------------------------------------------------------------------------------------

def _literal(value: Any) -> str:
    if isinstance(value, list):
        return "[" + ", ".join(_literal(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{_key(k)} = {_literal(v)}" for k, v in value.items() if v is not None) + " }"
    return toml_value(value)


def _key(name: str) -> str:
    """A bare key when TOML allows one, else quoted (quota ids may hold '@', ':' or '.')."""
    if name and all(c.isalnum() or c in "-_" for c in name) and name.isascii():
        return name
    return toml_value(name)


def _scalars(table: dict[str, Any], nested: tuple[str, ...]) -> list[str]:
    lines = []
    for k, v in table.items():
        if k in nested or v is None:
            continue    # TOML has no null: an absent key is the default (shown as a comment)
        lines.append(f"{k} = {_literal(v)}")
    return lines


def to_toml(doc: dict[str, Any]) -> str:
    """The services, routes and quotas of effective() as a TOML file (defaults written out)."""
    out: list[str] = []
    for s in doc["services"]:
        out += ["[[services]]", *_scalars(s, ("health", "breaker"))]
        for sub in ("health", "breaker"):
            if sub in s:
                out += ["", f"[services.{sub}]", *_scalars(s[sub], ())]
        out.append("")
    for r in doc["routes"]:
        out += ["[[routes]]", *_scalars(r, ("rate_limits",))]
        if r.get("methods") is None:
            out.append("# methods: every method")
        if r.get("timeout") is None:
            out.append("# timeout: GATEWAY_UPSTREAM_TIMEOUT")
        for p in r["rate_limits"]:
            out += ["", "[[routes.rate_limits]]", *_scalars(p, ())]
        out.append("")
    q = doc["quotas"]
    if q is not None:
        out.append("[quotas]")
        out += [f"{k} = {_literal(q[k])}" for k in ("default_user", "default_org") if q[k] is not None]
        for kind in ("orgs", "users"):
            for name, limit in q[kind].items():
                out += ["", f"[quotas.{kind}.{_key(name)}]", *_scalars(limit, ())]
        out.append("")
    return "\n".join(out)
