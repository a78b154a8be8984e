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

from dataclasses import fields, is_dataclass
from typing import TYPE_CHECKING, Any

from .keys import toml_value

if TYPE_CHECKING:
    from .env import Settings
    from .model import GatewayConfig, QuotaLimit, RouteConfig, ServiceConfig


# Model fields that are not TOML keys: derived from another key (a target's host, port and scheme
# come from its url; a route's `exact` is the `=` of its path) or internal (a route's file position).
_DERIVED: dict[str, frozenset[str]] = {
    "TargetConfig": frozenset({"host", "port", "tls"}),
    "RouteConfig": frozenset({"index", "exact"}),
}


# Keys the parser takes only together with another (it refuses or warns about them alone): shown
# only when their condition holds, so the dump reads back as it was. (json_max_bytes and the TLS
# keys belong to features of other branches; a missing field simply never matches.)
_ONLY_WITH: dict[tuple[str, str], Any] = {
    ("FallbackConfig", "content_type"): lambda f: f.body is not None,
    ("RouteConfig", "json_max_bytes"): lambda r: getattr(r, "json_check", False),
    ("ServiceConfig", "tls_verify"): lambda s: any(getattr(t, "tls", False) for t in s.targets),
    ("ServiceConfig", "ca_file"): lambda s: any(getattr(t, "tls", False) for t in s.targets),
}


def _fields(obj: Any) -> dict[str, Any]:
    """A config dataclass under its TOML keys: every field, so a key added to the model shows up
    here without an edit (tests/integration/test_cli_ops.py checks each one is a key the parser
    takes); nested dataclasses recursively, tuples as lists, bytes as text."""
    kind = type(obj).__name__
    skip = _DERIVED.get(kind, frozenset())
    out: dict[str, Any] = {}
    for f in fields(obj):
        if f.name in skip or not f.init:
            continue
        shown_if = _ONLY_WITH.get((kind, f.name))
        if shown_if is not None and not shown_if(obj):
            continue
        out[f.name] = _value(getattr(obj, f.name))
    return out


def _value(v: Any) -> Any:
    if is_dataclass(v) and not isinstance(v, type):
        return _fields(v)
    if isinstance(v, tuple):
        return [_value(x) for x in v]
    if isinstance(v, bytes):
        return v.decode("utf-8")
    return v


def _service(s: ServiceConfig) -> dict[str, Any]:
    return _fields(s)


def route_dict(r: RouteConfig) -> dict[str, Any]:
    """A route under its TOML keys, defaults filled in (`timeout` null: GATEWAY_UPSTREAM_TIMEOUT)."""
    out = _fields(r)
    out["path"] = ("=" if r.exact else "") + r.path
    # The TOML's shape: a sliding window has no `burst` key at all.
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
            if s.get(sub) is not None:
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
