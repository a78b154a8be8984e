"""Validation of rate-limit policies and quotas (SPEC §3), shared by the TOML loader (schema.py)
and the admin API's live adjustment (SPEC §8), so both refuse the same things with the same
words: a path naming the field (`routes[0].rate_limits[1].burst: ...` or
`rate_limits[1].burst: ...`) and the accepted form.

`c` is schema.py's _Collector (error(), integer(), seconds(), string(), unknown_keys()).
"""
from __future__ import annotations

import re
from typing import Any

from .model import QuotaLimit, QuotasConfig, RateLimitConfig

KEYS = ("ip", "user", "org", "api_key", "route")
ALGORITHMS = ("sliding_window", "token_bucket")
_HEADER = re.compile(r"header:([!#$%&'*+.^_`|~0-9A-Za-z-]+)")      # RFC 9110 field-name token
_POLICY_KEYS = {"key", "limit", "window", "algorithm", "burst"}
_QUOTA_KEYS = {"limit", "window"}
_ORG_KEYS = {"limit", "window", "user_limit"}
_QUOTAS_KEYS = {"default_user", "default_org", "orgs", "users"}
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@:-]{0,127}")   # user and org ids in TOML table keys


def parse_policy(c: Any, path: str, raw: Any) -> RateLimitConfig | None:
    if not isinstance(raw, dict):
        c.error(path, "expected a table {key, limit, window, algorithm?, burst?}")
        return None
    c.unknown_keys(path, raw, _POLICY_KEYS)
    key = c.string(f"{path}.key", raw.get("key"), required=True, plain=False)
    if key is not None:
        m = _HEADER.fullmatch(key)
        if m is not None:
            key = "header:" + m.group(1).lower()
        elif key not in KEYS:
            c.error(f"{path}.key", f"expected one of {', '.join(KEYS)} or header:NAME, got {key!r}")
            key = None
    limit = window = None
    if "limit" not in raw:
        c.error(f"{path}.limit", "required")
    else:
        limit = c.integer(f"{path}.limit", raw["limit"], "routes[].rate_limits[].limit")
    if "window" not in raw:
        c.error(f"{path}.window", "required")
    else:
        window = c.seconds(f"{path}.window", raw["window"], "routes[].rate_limits[].window")
    algorithm = c.string(f"{path}.algorithm", raw.get("algorithm"), plain=False) or "sliding_window"
    if algorithm not in ALGORITHMS:
        c.error(f"{path}.algorithm", f"expected one of {', '.join(ALGORITHMS)}, got {algorithm!r}")
        return None
    burst = 0
    if "burst" in raw:
        if algorithm != "token_bucket":
            c.error(f"{path}.burst", "only for algorithm = \"token_bucket\" (a sliding window has no burst)")
            return None
        b = c.integer(f"{path}.burst", raw["burst"], "routes[].rate_limits[].burst")
        if b is None:
            return None
        burst = b
    if key is None or limit is None or window is None:
        return None
    return RateLimitConfig(key=key, limit=limit, window=window, algorithm=algorithm, burst=burst)


def parse_rate_limits(c: Any, path: str, value: Any) -> tuple[RateLimitConfig, ...]:
    if value is None:
        return ()
    if not isinstance(value, list):
        c.error(path, "expected an array of tables ([[routes.rate_limits]])")
        return ()
    out = []
    for i, raw in enumerate(value):
        p = parse_policy(c, f"{path}[{i}]", raw)
        if p is not None:
            out.append(p)
    return tuple(out)


def parse_quota(c: Any, path: str, raw: Any, *, org: bool = False) -> QuotaLimit | None:
    if not isinstance(raw, dict):
        c.error(path, "expected a table {limit, window" + (", user_limit?}" if org else "}"))
        return None
    c.unknown_keys(path, raw, _ORG_KEYS if org else _QUOTA_KEYS)
    limit = window = None
    if "limit" not in raw:
        c.error(f"{path}.limit", "required")
    else:
        limit = c.integer(f"{path}.limit", raw["limit"], "quotas.<table>.limit")
    if "window" not in raw:
        c.error(f"{path}.window", "required")
    else:
        window = c.seconds(f"{path}.window", raw["window"], "quotas.<table>.window")
    user_limit = None
    if org and "user_limit" in raw:
        user_limit = c.integer(f"{path}.user_limit", raw["user_limit"], "quotas.orgs.<org>.user_limit")
        if user_limit is None:
            return None
    if limit is None or window is None:
        return None
    return QuotaLimit(limit=limit, window=window, user_limit=user_limit)


def parse_name(c: Any, path: str, name: str) -> bool:
    if not _NAME.fullmatch(name):
        c.error(path, f"expected an id of letters, digits, '.', '_', '@', ':' or '-' (max 128), got {name!r}")
        return False
    return True


def parse_quotas(c: Any, raw: Any) -> QuotasConfig | None:
    if not isinstance(raw, dict):
        c.error("quotas", "expected a table [quotas]")
        return None
    c.unknown_keys("quotas", raw, _QUOTAS_KEYS)
    du = parse_quota(c, "quotas.default_user", raw["default_user"]) if "default_user" in raw else None
    do = parse_quota(c, "quotas.default_org", raw["default_org"]) if "default_org" in raw else None
    tables: dict[str, dict[str, QuotaLimit]] = {"orgs": {}, "users": {}}
    for kind in ("orgs", "users"):
        section = raw.get(kind, {})
        if not isinstance(section, dict):
            c.error(f"quotas.{kind}", f"expected a table of [quotas.{kind}.<id>] tables")
            continue
        for name, table in section.items():
            path = f"quotas.{kind}.{name}"
            if not parse_name(c, path, name):
                continue
            q = parse_quota(c, path, table, org=kind == "orgs")
            if q is not None:
                tables[kind][name] = q
    return QuotasConfig(default_user=du, default_org=do, orgs=tables["orgs"], users=tables["users"])
