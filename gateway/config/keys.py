"""Every TOML key (SPEC §3), documented: the rows docs/configuration.md is generated from.

Which keys exist is decided by the parsers (schema.py, limits_schema.py), not here: KEYS only says
what each one means. `parser_keys()` reads the parsers' own sets of allowed keys, and the reference
generator (gateway/config/reference.py) refuses to run when a key the parser accepts is not
documented here, or a documented one is no longer accepted; tests/config/test_reference.py runs it.
Defaults are read from the model's dataclasses (model.py) where the parser takes them from there, and
ranges from RANGES (ranges.py), so neither is written twice.

Paths use RANGES's notation: `[]` for any array index, `<name>` for a table key of your choosing.
"""
from __future__ import annotations

from dataclasses import MISSING, dataclass, fields
from typing import Any

from .model import BreakerConfig, FallbackConfig, HealthConfig, RateLimitConfig, RouteConfig, ServiceConfig


def _default(cls: type, name: str) -> str:
    """The dataclass default of `cls.name`, written as TOML would (true, 0.5, "round_robin")."""
    for f in fields(cls):
        if f.name == name:
            if f.default is MISSING:
                raise KeyError(f"{cls.__name__}.{name} has no default")
            return toml_value(f.default)
    raise KeyError(f"{cls.__name__} has no field {name}")


def toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, float) and value.is_integer():
        return f"{value:.1f}"
    return str(value)


@dataclass(frozen=True, slots=True)
class Key:
    path: str           # "routes[].timeout"
    type: str           # "string", "number (seconds)", "array of strings", "table"...
    doc: str            # markdown
    default: str = ""   # as written in TOML; "" = none (absent means "off", or it is required)
    example: str = ""   # a TOML value
    required: bool = False


KEYS: tuple[Key, ...] = (
    # --- top level ------------------------------------------------------------------------------
    Key("services", "array of tables", "`[[services]]`: the upstream services routes send to"),
    Key("routes", "array of tables", "`[[routes]]`: what requests match, in file order for ties"),
    Key("quotas", "table", "`[quotas]`: hierarchical per-user and per-org quotas applied on every route"),
    # --- [[services]] -----------------------------------------------------------------------------
    Key("services[].name", "string", "the service's name (letters, digits, `.`, `_`, `-`; max 128); "
        "routes name it in `service`; it is the `service` metric label", example='"users"', required=True),
    Key("services[].balancer", "string", "`round_robin`, `weighted`, `least_conn`, `ip_hash`, "
        "`consistent_hash`, `p2c_ewma`", _default(ServiceConfig, "balancer"), '"least_conn"'),
    Key("services[].hash_key", "string", "what `consistent_hash` hashes: `ip`, `header:NAME`, `cookie:NAME` "
        "or `claim:NAME` (ignored with a warning for other balancers)", '"ip" (consistent_hash)',
        '"header:x-user-id"'),
    Key("services[].targets", "array", "at least one target: `{ url, weight, version }` tables or plain URL "
        "strings", example='[{ url = "http://10.0.0.5:8080", weight = 2 }]', required=True),
    Key("services[].targets[].url", "string", "`http://host[:port]` (port 80 by default) or `https://host[:port]` (port 443; "
        "verified, SNI from the host); a host name is resolved when connecting", example='"http://10.0.0.5:8080"', required=True),
    Key("services[].targets[].weight", "integer", "relative weight for `weighted` (and the canary split)",
        "1", "3"),
    Key("services[].targets[].version", "string", "a version label a route's `canary` selects", example='"v2"'),
    Key("services[].tls_verify", "boolean", "`https://` targets: verify the certificate and its host name "
        "(`false`: encrypt without verifying)", "true", "false"),
    Key("services[].ca_file", "string", "`https://` targets: a PEM CA bundle to verify against instead of the "
        "system's (unreadable or not PEM: exit 2 naming it)", "the system's CA bundle", '"/etc/gateway/internal-ca.pem"'),
    Key("services[].health", "table", "`[services.health]`: active health checks; without it health is "
        "passive only (failures seen on real traffic)"),
    Key("services[].health.path", "string", "path probed with GET; 2xx/3xx is healthy",
        _default(HealthConfig, "path"), '"/healthz"'),
    Key("services[].health.interval", "number (seconds)", "time between probes (jittered ±20 %)",
        _default(HealthConfig, "interval"), "2.0"),
    Key("services[].health.timeout", "number (seconds)", "a probe slower than this failed",
        _default(HealthConfig, "timeout"), "0.5"),
    Key("services[].health.healthy_threshold", "integer", "successes in a row that bring a target back",
        _default(HealthConfig, "healthy_threshold"), "3"),
    Key("services[].health.unhealthy_threshold", "integer", "failures in a row that take a target out",
        _default(HealthConfig, "unhealthy_threshold"), "2"),
    Key("services[].health.max_backoff", "number (seconds)", "probes of a down target back off up to this "
        "(at least `interval`)", _default(HealthConfig, "max_backoff"), "30.0"),
    Key("services[].breaker", "table", "`[services.breaker]`: one circuit per target"),
    Key("services[].breaker.failure_threshold", "integer", "consecutive failures that open the circuit",
        _default(BreakerConfig, "failure_threshold"), "10"),
    Key("services[].breaker.error_rate", "number (fraction)", "failure rate in `window` that opens it (with "
        "at least `min_requests`)", _default(BreakerConfig, "error_rate"), "0.25"),
    Key("services[].breaker.min_requests", "integer", "requests in `window` before `error_rate` counts",
        _default(BreakerConfig, "min_requests"), "50"),
    Key("services[].breaker.window", "number (seconds)", "the sliding window of `error_rate`",
        _default(BreakerConfig, "window"), "30.0"),
    Key("services[].breaker.open_timeout", "number (seconds)", "how long it stays open before half-open "
        "probes (doubles on repeated trips, up to 8x)", _default(BreakerConfig, "open_timeout"), "15.0"),
    Key("services[].breaker.half_open_requests", "integer", "probes admitted per half-open period",
        _default(BreakerConfig, "half_open_requests"), "5"),
    Key("services[].breaker.success_threshold", "integer", "successful probes that close it (at most "
        "`half_open_requests`)", _default(BreakerConfig, "success_threshold"), "2"),
    Key("services[].breaker.failure_statuses", "array of integers", "statuses that count as failures "
        "(connect errors and timeouts always do)", "every 5xx", "[502, 503, 504]"),
    # --- [[routes]] -------------------------------------------------------------------------------
    Key("routes[].name", "string", "the route's name; the `route` metric label and admin URL part",
        example='"users-api"', required=True),
    Key("routes[].path", "string", "a path prefix (`/api/`), or an exact path with `=` (`=/health`); "
        "canonical (no `//`, `;`, dot segments)", example='"/api/users"', required=True),
    Key("routes[].methods", "array of strings", "the methods it takes (others get 405)", "every method",
        '["GET", "POST"]'),
    Key("routes[].host", "string", "the `Host` it matches (no port); unset: any host", example='"api.example.com"'),
    Key("routes[].service", "string", "the `[[services]]` name it sends to", example='"users"', required=True),
    Key("routes[].strip_prefix", "boolean", "remove the matched prefix before forwarding",
        _default(RouteConfig, "strip_prefix"), "true"),
    Key("routes[].timeout", "number (seconds)", "overrides `GATEWAY_UPSTREAM_TIMEOUT` for this route → 504",
        "GATEWAY_UPSTREAM_TIMEOUT", "2.5"),
    Key("routes[].retries", "integer", "further attempts on other targets after a connect failure or a "
        "retryable error (idempotent methods)", _default(RouteConfig, "retries"), "2"),
    Key("routes[].websocket", "boolean", "tunnel `Upgrade` requests (WebSocket and others)",
        _default(RouteConfig, "websocket"), "true"),
    Key("routes[].auth", "array of strings", "`jwt` and/or `api_key`: any one admits; empty: public", "[]",
        '["jwt", "api_key"]'),
    Key("routes[].scopes", "array of strings", "scopes the credential must all carry (403 otherwise); needs "
        "`auth`", "[]", '["users:read"]'),
    Key("routes[].content_types", "array of strings", "media types a request body may have (415 otherwise)",
        "any", '["application/json"]'),
    Key("routes[].json_check", "boolean", "JSON request bodies must parse (400, audited); the body is held up to "
        "`json_max_bytes` (413 beyond) and then forwarded unchanged", "false", "true"),
    Key("routes[].json_max_bytes", "integer", "the body size `json_check` holds; needs `json_check = true`",
        "65536", "1048576"),
    Key("routes[].security_headers", "boolean", "add the API security response headers (HSTS, nosniff, "
        "frame-deny, no-referrer, CSP `default-src 'none'`)", _default(RouteConfig, "security_headers"), "true"),
    Key("routes[].canary", "table", "`{ version, weight, header }`: send `weight` % of users (sticky) to the "
        "service's targets of `version`; changeable at run time (`PUT /routes/{name}/canary`)"),
    Key("routes[].canary.version", "string", "the targets' `version` that gets the canary share",
        example='"v2"', required=True),
    Key("routes[].canary.weight", "integer", "percent of users sent to `version`", "0", "10"),
    Key("routes[].canary.header", "string", "a request header whose value `always` / `never` overrides the "
        "cohort", example='"x-canary"'),
    Key("routes[].fallback", "table", "`{ status, body, content_type }`: the reply when the service has no "
        "usable target (all down or open)"),
    Key("routes[].fallback.status", "integer", "its status", _default(FallbackConfig, "status"), "200"),
    Key("routes[].fallback.body", "string", "its body (max 64 KiB)", "the JSON error body",
        '"{\\"items\\": []}"'),
    Key("routes[].fallback.content_type", "string", "its `Content-Type` (only with a body)",
        _default(FallbackConfig, "content_type"), '"text/plain; charset=utf-8"'),
    Key("routes[].rate_limits", "array of tables", "`[[routes.rate_limits]]`: every policy must admit a "
        "request (429 otherwise); changeable at run time (`PUT /limits/routes/{route}`)"),
    Key("routes[].rate_limits[].key", "string", "who is counted: `ip`, `user`, `org`, `api_key`, `route` or "
        "`header:NAME`", example='"user"', required=True),
    Key("routes[].rate_limits[].limit", "integer", "requests per window", example="100", required=True),
    Key("routes[].rate_limits[].window", "number (seconds)", "the window", example="60.0", required=True),
    Key("routes[].rate_limits[].algorithm", "string", "`sliding_window` or `token_bucket`",
        _default(RateLimitConfig, "algorithm"), '"token_bucket"'),
    Key("routes[].rate_limits[].burst", "integer", "token_bucket only: bucket size above the steady rate",
        _default(RateLimitConfig, "burst"), "20"),
    # --- [quotas] ---------------------------------------------------------------------------------
    Key("quotas.default_user", "table", "`{ limit, window }` for each user without an override",
        example="{ limit = 10000, window = 86400.0 }"),
    Key("quotas.default_org", "table", "`{ limit, window }` for each organization without an override",
        example="{ limit = 100000, window = 86400.0 }"),
    Key("quotas.orgs", "table", "`[quotas.orgs.<org>]`: per-organization overrides"),
    Key("quotas.users", "table", "`[quotas.users.<user>]`: per-user overrides"),
    Key("quotas.<table>.limit", "integer", "requests per window (`<table>`: `default_user`, `default_org`, "
        "`orgs.<org>`, `users.<user>`)", example="5000", required=True),
    Key("quotas.<table>.window", "number (seconds)", "the window", example="3600.0", required=True),
    Key("quotas.orgs.<org>.user_limit", "integer", "each user's share of this organization's quota",
        example="500"),
)


def parser_keys() -> dict[str, set[str]]:
    """Table path → the keys its parser accepts (the parsers' own sets, not a copy)."""
    from . import limits_schema as ls
    from . import schema as s

    return {
        "": s._TOP_KEYS,
        "services[]": s._SERVICE_KEYS,
        "services[].targets[]": s._TARGET_KEYS,
        "services[].health": s._HEALTH_KEYS,
        "services[].breaker": s._BREAKER_KEYS,
        "routes[]": s._ROUTE_KEYS,
        "routes[].canary": s._CANARY_KEYS,
        "routes[].fallback": s._FALLBACK_KEYS,
        "routes[].rate_limits[]": ls._POLICY_KEYS,
        "quotas": ls._QUOTAS_KEYS,
        "quotas.<table>": ls._QUOTA_KEYS,
        "quotas.orgs.<org>": ls._ORG_KEYS,
    }


def documented_keys() -> dict[str, set[str]]:
    """Table path → the keys KEYS documents there (the same shape as parser_keys())."""
    out: dict[str, set[str]] = {}
    for k in KEYS:
        table, _, key = k.path.rpartition(".")
        out.setdefault(table, set()).add(key)
    # An org's table takes the quota keys too; they are documented once, under quotas.<table>.
    out.setdefault("quotas.orgs.<org>", set()).update(out.get("quotas.<table>", set()))
    return out


def undocumented() -> list[str]:
    """Problems between the parsers and KEYS, one line each ([] when they agree)."""
    code, docs = parser_keys(), documented_keys()
    problems = []
    for table in sorted(set(code) | set(docs)):
        where = table or "(top level)"
        for key in sorted(code.get(table, set()) - docs.get(table, set())):
            problems.append(f"{where}: the parser accepts `{key}` but gateway/config/keys.py does not document it")
        for key in sorted(docs.get(table, set()) - code.get(table, set())):
            problems.append(f"{where}: `{key}` is documented in gateway/config/keys.py but the parser refuses it")
    return problems
