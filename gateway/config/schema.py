"""TOML (SPEC §3) → validated GatewayConfig.

Every problem is collected with its path (`routes[2].limt: unknown key`,
`services[0].targets[1].url: expected http://host:port, got 'ftp://x'`) and raised together as one
ConfigErrors, so `gateway check` shows the whole list and SIGHUP refuses a bad file with its reasons.

Keys of SPEC §3 whose feature is not built yet are refused with "<path>: not supported yet" when
their value asks for the feature. An explicitly empty value that asks for nothing (`auth = []`,
`rate_limits = []`) is accepted: it means what the gateway does
today. Silently ignoring `auth = ["jwt"]` would publish a route its author believed protected.
"""
from __future__ import annotations

import ipaddress
import logging
import os
import re
import tomllib
from typing import Any

from .errors import ConfigErrors
from .limits_schema import parse_quotas, parse_rate_limits
from .model import (
    BreakerConfig,
    CanaryConfig,
    FallbackConfig,
    GatewayConfig,
    HealthConfig,
    RouteConfig,
    ServiceConfig,
    TargetConfig,
)
from .ranges import RANGES

log = logging.getLogger("gateway.config")

# The variable a supervised worker finds its boot snapshot in (gateway/process.py defines it for
# the supervisor; spelled out here so the config layer imports nothing above it).
BOOT_CONFIG_ENV = "_GATEWAY_BOOT_CONFIG"

NOT_YET = "not supported yet"
BALANCERS = ("round_robin", "weighted", "least_conn", "ip_hash", "consistent_hash", "p2c_ewma")
_HEALTH_KEYS = {"path", "interval", "timeout", "healthy_threshold", "unhealthy_threshold", "max_backoff"}
# A header or cookie name in hash_key: an RFC 9110 token (what can appear on the wire at all).
_HASH_KEY = re.compile(r"ip|(header|cookie|claim):[!#$%&'*+.^_`|~0-9A-Za-z-]{1,128}")

# Names end up in metric labels, admin URLs and log lines: keep them to one URL-safe token.
# Every pattern here is applied with fullmatch(): `re.match` with a `$` anchor also accepts a trailing
# "\n", and `methods = ["PUT\n"]` then came back on the wire as `Allow: PUT\n`.
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")          # RFC 9110 token (methods)
_HOST_LABEL = r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?"
_HOSTNAME = re.compile(rf"(?=.{{1,253}}\Z){_HOST_LABEL}(\.{_HOST_LABEL})*")
# RFC 3986 path characters: unreserved, sub-delims, ":", "@", "/" and %XX escapes. Anything else
# (space, "?", "#", quotes, controls) could never equal a normalized request path.
_PATH = re.compile(r"/(?:[A-Za-z0-9\-._~!$&'()*+,;=:@/]|%[0-9A-Fa-f]{2})*")
_ENCODED_PLAIN = re.compile(r"%(2[dDeEfF]|3[0-9]|[46][1-9a-fA-F]|[57][0-9aA]|5[fF]|7[eE])")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")                     # C0 controls (TAB, CR, LF, NUL...) and DEL

_TOP_KEYS = {"services", "routes", "quotas"}
_SERVICE_KEYS = {"name", "balancer", "hash_key", "targets", "health", "breaker", "tls_verify", "ca_file"}
_TARGET_KEYS = {"url", "weight", "version"}
_ROUTE_KEYS = {
    "name", "path", "methods", "host", "service", "strip_prefix", "auth", "scopes", "timeout",
    "retries", "canary", "fallback", "rate_limits", "websocket",
    "content_types", "security_headers", "json_check", "json_max_bytes",   # request hygiene (README "Request hygiene")
}
_CANARY_KEYS = {"version", "weight", "header"}
_MEDIA_TYPE = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+/[!#$%&'*+.^_`|~0-9A-Za-z-]+")


def _shown_number(value: int | float) -> str:
    # str() of an int beyond 4300 digits raises ValueError (TOML hex literals can be that long).
    if isinstance(value, int) and abs(value) >= 10**30:
        return f"an integer of {value.bit_length()} bits"
    return repr(value)


def _kind(value: Any) -> str:
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "a table"
    return type(value).__name__


class _Collector:
    """Accumulates "path: message" lines; the parse functions return None for a bad value."""

    def __init__(self) -> None:
        self.problems: list[str] = []

    def error(self, path: str, message: str) -> None:
        if len(message) > 300:   # a value quoted in the message may be megabytes long
            message = message[:300] + f"... ({len(message)} characters)"
        self.problems.append(f"{path}: {message}")

    def unknown_keys(self, path: str, table: dict[str, Any], allowed: set[str]) -> None:
        for key in table:
            if key not in allowed:
                self.error(f"{path}.{key}" if path else key, "unknown key")

    def string(self, path: str, value: Any, required: bool = False, *, plain: bool = True) -> str | None:
        """A string; `plain` refuses control characters (callers whose own pattern is stricter
        pass plain=False to report their more useful form instead)."""
        if value is None:
            if required:
                self.error(path, "required")
            return None
        if not isinstance(value, str):
            self.error(path, f"expected a string, got {_kind(value)}")
            return None
        if plain and _CONTROL.search(value):
            # TOML escapes ("\n", "\u0000") can put any of them in a string; none belongs in a
            # name, version or reference that ends up in headers, log lines or metric labels.
            self.error(path, f"expected text without control characters, got {value!r}")
            return None
        return value

    def name(self, path: str, value: Any) -> str | None:
        s = self.string(path, value, required=True, plain=False)
        if s is not None and not _NAME.fullmatch(s):
            self.error(path, f"expected a name of letters, digits, '.', '_' or '-' (max 128), got {s!r}")
            return None
        return s

    def boolean(self, path: str, value: Any, default: bool) -> bool:
        if value is None:
            return default
        if not isinstance(value, bool):
            self.error(path, f"expected true or false, got {_kind(value)}")
            return default
        return value

    def number(self, path: str, value: Any, key: str) -> int | float | None:
        """A numeric value checked against RANGES[key] (gateway/config/ranges.py, the one table
        the README documents): an integer for counts and sizes, any number for seconds."""
        rng = RANGES[key]
        if isinstance(value, bool) or not isinstance(value, int | float) or (
                rng.integer and not isinstance(value, int)):
            self.error(path, f"expected {rng.form}, got {_kind(value)}")
            return None
        if value not in rng:   # NaN and ±inf too: they compare outside every range
            self.error(path, f"expected {rng.form}, got {_shown_number(value)}")
            return None
        return value

    def seconds(self, path: str, value: Any, key: str) -> float | None:
        if value is None:
            return None
        v = self.number(path, value, key)
        return None if v is None else float(v)

    def integer(self, path: str, value: Any, key: str) -> int | None:
        v = self.number(path, value, key)
        return None if v is None else int(v)

    def table_list(self, path: str, value: Any) -> list[dict[str, Any]]:
        if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
            self.error(path, f"expected an array of tables ([[{path}]]), got {_kind(value)}")
            return []
        return value

    def not_yet_unless_empty(self, path: str, value: Any, empty: Any) -> None:
        """Refuse a key of a feature not built yet unless its value asks for nothing."""
        if value is None:
            return
        if value == empty and type(value) is type(empty):
            return
        self.error(path, NOT_YET)


# --- parts -------------------------------------------------------------------------------------

def _parse_target_url(c: _Collector, path: str, url: Any, *, https: bool = False) -> tuple[str, int] | None:
    """http://host[:port][/] → (host, port); with `https`, https://host[:port][/] too (default port
    443; the caller reads the scheme from the URL). Paths and credentials upstream are not built.
    (Registered targets, gateway/discovery/admin.py, are http:// only: a registration carries no
    trust settings.)"""
    expected = "expected http://host:port or https://host:port" if https else "expected http://host:port"
    if not isinstance(url, str):
        c.error(path, f"{expected}, got {_kind(url)}")
        return None
    scheme = "https?" if https else "http"
    m = re.fullmatch(scheme + r"://(\[[0-9A-Fa-f:.]+\]|[^/:@\[\]?#\s]+)(?::([0-9]{1,5}))?/?", url)
    if m is None:
        c.error(path, f"{expected}, got {url!r}")
        return None
    raw_host, raw_port = m.group(1), m.group(2)
    port = int(raw_port) if raw_port else (443 if url.startswith("https:") else 80)
    if not 1 <= port <= 65535:
        c.error(path, f"{expected} with a port 1-65535, got {url!r}")
        return None
    host = raw_host.lower()
    if host.startswith("["):
        try:
            host = str(ipaddress.IPv6Address(host[1:-1]))
        except ValueError:
            c.error(path, f"{expected}, got {url!r} (bad IPv6 address)")
            return None
    elif not _HOSTNAME.fullmatch(host.rstrip(".")) and not _is_ipv4(host):
        c.error(path, f"{expected}, got {url!r} (bad host)")
        return None
    return host.rstrip("."), port


def _is_ipv4(host: str) -> bool:
    try:
        ipaddress.IPv4Address(host)
        return True
    except ValueError:
        return False


def _parse_target(c: _Collector, path: str, raw: Any) -> TargetConfig | None:
    if isinstance(raw, str):  # shorthand: targets = ["http://127.0.0.1:9001"]
        raw = {"url": raw}
    if not isinstance(raw, dict):
        c.error(path, f"expected a table {{ url = \"http://host:port\" }} or a URL string, got {_kind(raw)}")
        return None
    c.unknown_keys(path, raw, _TARGET_KEYS)
    if "url" not in raw:
        c.error(f"{path}.url", "required")
        return None
    hp = _parse_target_url(c, f"{path}.url", raw["url"], https=True)
    weight = 1
    if "weight" in raw:
        w = c.integer(f"{path}.weight", raw["weight"], "services[].targets[].weight")
        weight = w or 1
    version = c.string(f"{path}.version", raw.get("version"))
    if hp is None:
        return None
    return TargetConfig(url=raw["url"], host=hp[0], port=hp[1], weight=weight, version=version,
                        tls=raw["url"].startswith("https:"))


def _parse_service(c: _Collector, path: str, raw: dict[str, Any]) -> ServiceConfig | None:
    c.unknown_keys(path, raw, _SERVICE_KEYS)
    name = c.name(f"{path}.name", raw.get("name"))
    balancer = c.string(f"{path}.balancer", raw.get("balancer")) or "round_robin"
    if balancer not in BALANCERS:
        c.error(f"{path}.balancer", f"expected one of {', '.join(BALANCERS)}; got {balancer!r}")
    hash_key = _parse_hash_key(c, f"{path}.hash_key", raw.get("hash_key"), balancer)
    health = _parse_health(c, f"{path}.health", raw["health"]) if "health" in raw else None
    breaker = _parse_breaker(c, f"{path}.breaker", raw["breaker"]) if "breaker" in raw else None
    tls_verify = c.boolean(f"{path}.tls_verify", raw.get("tls_verify"), True)
    ca_file = _parse_ca_file(c, f"{path}.ca_file", raw.get("ca_file"))
    targets: list[TargetConfig] = []
    raw_targets = raw.get("targets")
    if raw_targets is None:
        c.error(f"{path}.targets", "required (at least one target)")
    elif not isinstance(raw_targets, list):
        c.error(f"{path}.targets", f"expected an array of targets, got {_kind(raw_targets)}")
    elif not raw_targets:
        c.error(f"{path}.targets", "expected at least one target")
    else:
        seen: dict[str, int] = {}
        for i, rt in enumerate(raw_targets):
            t = _parse_target(c, f"{path}.targets[{i}]", rt)
            if t is None:
                continue
            if t.id in seen:
                c.error(f"{path}.targets[{i}].url", f"duplicate target {t.id} (also targets[{seen[t.id]}])")
                continue
            seen[t.id] = i
            targets.append(t)
    if name is None:
        return None
    if (ca_file is not None or "tls_verify" in raw) and targets and not any(t.tls for t in targets):
        log.warning("%s: tls_verify / ca_file apply to https:// targets only (this service has none): unused", path)
    return ServiceConfig(name=name, targets=tuple(targets), balancer=balancer, hash_key=hash_key, health=health,
                         breaker=breaker, tls_verify=bool(tls_verify), ca_file=ca_file)


def _parse_ca_file(c: _Collector, path: str, value: Any) -> str | None:
    """A service's own CA bundle (PEM) for its https:// targets, loaded now: a missing file or one
    without a usable certificate stops the start or the reload (exit 2 naming this path)."""
    s = c.string(path, value, plain=False)
    if s is None:
        return None
    from gateway.tls import TLSError, UpstreamTLS, client_context

    try:
        client_context(UpstreamTLS.of(True, s))
    except TLSError as exc:
        c.error(path, f"expected a PEM file of CA certificates: {exc}")
        return None
    return s


def _parse_hash_key(c: _Collector, path: str, value: Any, balancer: str) -> str | None:
    if value is None:
        return "ip" if balancer == "consistent_hash" else None
    s = c.string(path, value, plain=False)
    if s is None:
        return None
    if not _HASH_KEY.fullmatch(s):
        c.error(path, f"expected ip, header:NAME, cookie:NAME or claim:NAME, got {s!r}")
        return None
    if balancer != "consistent_hash":
        # SPEC §3's own example sets it on a round_robin service: accepted, said, unused.
        log.warning("%s: only used by balancer = \"consistent_hash\" (this service's is %r): ignored", path, balancer)
        return None
    return s


def _parse_health(c: _Collector, path: str, raw: Any) -> HealthConfig | None:
    if not isinstance(raw, dict):
        c.error(path, f"expected a table ([services.health]), got {_kind(raw)}")
        return None
    c.unknown_keys(path, raw, _HEALTH_KEYS)
    hp = c.string(f"{path}.path", raw.get("path"), plain=False)
    if hp is None and "path" not in raw:
        hp = "/health"
    elif hp is not None and not _PATH.fullmatch(hp.partition("?")[0]):
        c.error(f"{path}.path", f"expected a URL path starting with '/', got {hp!r}")
        hp = None
    vals: dict[str, Any] = {}
    for key, kind in (("interval", "s"), ("timeout", "s"), ("healthy_threshold", "i"),
                      ("unhealthy_threshold", "i"), ("max_backoff", "s")):
        if key in raw:
            rk = f"services[].health.{key}"
            v = (c.seconds if kind == "s" else c.integer)(f"{path}.{key}", raw[key], rk)
            if v is None:
                return None
            vals[key] = v
    if hp is None:
        return None
    h = HealthConfig(path=hp, **vals)
    if h.max_backoff < h.interval:
        c.error(f"{path}.max_backoff", f"expected at least interval ({h.interval}), got {h.max_backoff}")
        return None
    return h




_BREAKER_KEYS = {"failure_threshold", "error_rate", "min_requests", "window", "open_timeout",
                 "half_open_requests", "success_threshold", "failure_statuses"}


def _parse_breaker(c: _Collector, path: str, raw: Any) -> BreakerConfig | None:
    """[services.breaker]: every key optional (BreakerConfig's defaults are SPEC §3's example)."""
    if not isinstance(raw, dict):
        c.error(path, f"expected a table ([services.breaker]), got {_kind(raw)}")
        return None
    c.unknown_keys(path, raw, _BREAKER_KEYS)
    d = BreakerConfig()
    ok = True
    values: dict[str, Any] = {}
    for key in ("failure_threshold", "min_requests", "half_open_requests", "success_threshold"):
        if key in raw:
            v = c.integer(f"{path}.{key}", raw[key], f"services[].breaker.{key}")
            ok &= v is not None
            values[key] = v
    for key in ("error_rate", "window", "open_timeout"):
        if key in raw:
            f = c.seconds(f"{path}.{key}", raw[key], f"services[].breaker.{key}")
            ok &= f is not None
            values[key] = f
    if values.get("error_rate") == 0.0:
        # A rate of 0 would open on the first failure of any window: failure_threshold = 1 says so.
        c.error(f"{path}.error_rate", "expected a fraction in (0, 1] (0 is not a rate: use failure_threshold = 1)")
        ok = False
    hor = values.get("half_open_requests") or d.half_open_requests
    if "success_threshold" in raw:
        st = values.get("success_threshold")
        if st is not None and st > hor:
            c.error(f"{path}.success_threshold",
                    f"expected at most half_open_requests ({hor}): only that many probes are admitted, got {st}")
            ok = False
    else:
        # Unset: the default 3, or every probe when fewer are admitted (SPEC §8: it is <= them).
        values["success_threshold"] = min(d.success_threshold, hor)
    statuses: tuple[int, ...] | None = None
    if "failure_statuses" in raw:
        rs = raw["failure_statuses"]
        if not isinstance(rs, list):
            c.error(f"{path}.failure_statuses", f"expected an array of HTTP status codes, got {_kind(rs)}")
            ok = False
        else:
            got = [c.integer(f"{path}.failure_statuses[{i}]", v, "services[].breaker.failure_statuses[]")
                   for i, v in enumerate(rs)]
            ok &= all(v is not None for v in got)
            statuses = tuple(sorted({v for v in got if v is not None}))
    if not ok:
        return None
    return BreakerConfig(**{k: v for k, v in values.items() if v is not None}, failure_statuses=statuses)


_FALLBACK_KEYS = {"status", "body", "content_type"}
MAX_FALLBACK_BODY = 64 << 10      # a prepared reply held per route: a page, not a download
# type/subtype with optional parameters, as RFC 9110 §8.3.1 has it (no controls: it is a header value)
_MEDIA_TYPE = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+/[!#$%&'*+.^_`|~0-9A-Za-z-]+([ \t]*;[ \t]*[!#$%&'*+.^_`|~0-9A-Za-z-]+=(\"[^\"\x00-\x1f\x7f]*\"|[!#$%&'*+.^_`|~0-9A-Za-z-]+))*")


def _parse_fallback(c: _Collector, path: str, raw: Any) -> FallbackConfig | None:
    """A route's `fallback = { status, body, content_type }` (SPEC §3, §4)."""
    if not isinstance(raw, dict):
        c.error(path, f"expected a table {{ status = 503, body = \"...\", content_type = \"...\" }}, got {_kind(raw)}")
        return None
    c.unknown_keys(path, raw, _FALLBACK_KEYS)
    status = 503
    ok = True
    if "status" in raw:
        v = c.integer(f"{path}.status", raw["status"], "routes[].fallback.status")
        ok &= v is not None
        status = v or status
        if v is not None and v in (204, 205, 304):
            # These carry no body (RFC 9110 §15.3.5, §15.3.6, §15.4.5): the reply's framing would lie.
            c.error(f"{path}.status", f"expected a status that carries a body, got {v}")
            ok = False
    body: bytes | None = None
    if "body" in raw:
        b = c.string(f"{path}.body", raw["body"], plain=False)
        if b is None:
            ok = False
        else:
            body = b.encode("utf-8")
            if len(body) > MAX_FALLBACK_BODY:
                c.error(f"{path}.body", f"expected at most {MAX_FALLBACK_BODY} bytes, got {len(body)}")
                ok = False
    ctype = "application/json"
    if "content_type" in raw:
        t = c.string(f"{path}.content_type", raw["content_type"], plain=False)
        if t is None or not _MEDIA_TYPE.fullmatch(t):
            if t is not None:
                c.error(f"{path}.content_type", f"expected a media type (text/plain; charset=utf-8), got {t!r}")
            ok = False
        elif body is None:
            c.error(f"{path}.content_type", "only with a body (without one the reply is the JSON error body)")
            ok = False
        else:
            ctype = t
    return FallbackConfig(status=status, body=body, content_type=ctype) if ok else None


def _parse_path(c: _Collector, path: str, value: Any) -> tuple[str, bool] | None:
    s = c.string(path, value, required=True, plain=False)
    if s is None:
        return None
    exact = s.startswith("=")
    p = s[1:] if exact else s
    if not p.startswith("/"):
        c.error(path, f"expected a path starting with '/' (or '=/' for an exact match), got {s!r}")
        return None
    if not _PATH.fullmatch(p):
        c.error(path, f"expected URL path characters only (no spaces, '?' or '#'), got {s!r}")
        return None
    if ";" in p or "//" in p or _ENCODED_PLAIN.search(p):
        # Request paths reach the router canonical (gateway/http/wire.py _canonical): parameters
        # removed, slashes merged, %XX of unreserved characters decoded, %2F refused.
        c.error(path, f"expected a canonical path (no ';', '//', %2F or %XX of a letter, digit or '-._~'), got {s!r}")
        return None
    if any(seg in (".", "..") for seg in p.split("/")):
        # Request paths reach the router with dot-segments resolved: such a route could never match.
        c.error(path, f"expected a path without '.' or '..' segments, got {s!r}")
        return None
    return p, exact


def _parse_methods(c: _Collector, path: str, value: Any) -> tuple[str, ...] | None:
    if value is None:
        return None
    if not isinstance(value, list) or not value:
        c.error(path, "expected a non-empty array of methods (omit the key for every method)")
        return None
    out: list[str] = []
    for i, m in enumerate(value):
        if not isinstance(m, str) or not _TOKEN.fullmatch(m):
            c.error(f"{path}[{i}]", f"expected an HTTP method token, got {m!r}")
            continue
        up = m.upper()
        if up not in out:
            out.append(up)
    return tuple(out)


def _parse_host(c: _Collector, path: str, value: Any) -> str | None:
    s = c.string(path, value, plain=False)
    if s is None:
        return None
    h = s.lower().rstrip(".")
    if h.startswith("[") and h.endswith("]"):
        try:
            return f"[{ipaddress.IPv6Address(h[1:-1])}]"
        except ValueError:
            pass
    elif _HOSTNAME.fullmatch(h) or _is_ipv4(h):
        return h
    c.error(path, f"expected a hostname without port (api.example.com), got {s!r}")
    return None


AUTH_METHODS = ("jwt", "api_key")
_SCOPE = re.compile(r"[!#-\[\]-~]{1,128}")                   # RFC 6749 scope-token: printable, no space, '"' or '\\'


def _parse_content_types(c: _Collector, path: str, value: Any) -> tuple[str, ...] | None:
    if value is None:
        return None
    if not isinstance(value, list) or not value:
        c.error(path, "expected a non-empty array of media types (omit the key to allow any)")
        return None
    out: list[str] = []
    for i, t in enumerate(value):
        if not isinstance(t, str) or not _MEDIA_TYPE.fullmatch(t):
            c.error(f"{path}[{i}]", f"expected a media type such as application/json, got {t!r}")
        elif t.lower() not in out:
            out.append(t.lower())
    return tuple(out)


def _parse_auth(c: _Collector, path: str, value: Any) -> tuple[str, ...]:
    if value is None:
        return ()
    if not isinstance(value, list):
        c.error(path, f"expected an array of {' / '.join(AUTH_METHODS)}, got {_kind(value)}")
        return ()
    out: list[str] = []
    for i, m in enumerate(value):
        if m not in AUTH_METHODS:
            c.error(f"{path}[{i}]", f"expected one of {', '.join(AUTH_METHODS)}, got {m!r}")
        elif m not in out:
            out.append(m)
    return tuple(out)


def _parse_scopes(c: _Collector, path: str, value: Any) -> tuple[str, ...]:
    if value is None:
        return ()
    if not isinstance(value, list):
        c.error(path, f"expected an array of scope strings, got {_kind(value)}")
        return ()
    out: list[str] = []
    for i, s in enumerate(value):
        if not isinstance(s, str) or not _SCOPE.fullmatch(s):
            c.error(f"{path}[{i}]", f"expected a scope (1-128 printable characters, no spaces or quotes), got {s!r}")
        elif s not in out:
            out.append(s)
    return tuple(out)


def _parse_route(c: _Collector, path: str, raw: dict[str, Any], index: int,
                 known_services: set[str]) -> RouteConfig | None:
    c.unknown_keys(path, raw, _ROUTE_KEYS)
    name = c.name(f"{path}.name", raw.get("name"))
    service = c.string(f"{path}.service", raw.get("service"), required=True)
    p = _parse_path(c, f"{path}.path", raw.get("path"))
    methods = _parse_methods(c, f"{path}.methods", raw.get("methods"))
    host = _parse_host(c, f"{path}.host", raw.get("host"))
    strip = c.boolean(f"{path}.strip_prefix", raw.get("strip_prefix"), False)
    timeout = c.seconds(f"{path}.timeout", raw.get("timeout"), "routes[].timeout")
    retries = c.integer(f"{path}.retries", raw["retries"], "routes[].retries") if "retries" in raw else 0
    websocket = c.boolean(f"{path}.websocket", raw.get("websocket"), False)
    content_types = _parse_content_types(c, f"{path}.content_types", raw.get("content_types"))
    security_headers = c.boolean(f"{path}.security_headers", raw.get("security_headers"), False)
    json_check = c.boolean(f"{path}.json_check", raw.get("json_check"), False)
    json_max_bytes = 65536
    if "json_max_bytes" in raw:
        json_max_bytes = c.integer(f"{path}.json_max_bytes", raw["json_max_bytes"], "routes[].json_max_bytes") or json_max_bytes
        if not json_check:
            c.error(f"{path}.json_max_bytes", "needs json_check = true (it caps the body the JSON check holds)")
    auth = _parse_auth(c, f"{path}.auth", raw.get("auth"))
    scopes = _parse_scopes(c, f"{path}.scopes", raw.get("scopes"))
    if scopes and not auth:
        c.error(f"{path}.scopes", "needs auth (scopes come from a credential; set auth = [\"jwt\"] and/or \"api_key\")")
    rate_limits = parse_rate_limits(c, f"{path}.rate_limits", raw.get("rate_limits"))
    canary = _parse_canary(c, f"{path}.canary", raw["canary"]) if "canary" in raw else None
    fallback = _parse_fallback(c, f"{path}.fallback", raw["fallback"]) if "fallback" in raw else None
    if service is not None and service not in known_services:
        # Checked here, not in _cross_check, so it is reported even when another key of this
        # route is bad (the route is then dropped before the cross-checks).
        c.error(f"{path}.service", f"unknown service {service!r}")
    if name is None or service is None or p is None:
        return None
    return RouteConfig(
        name=name, service=service, path=p[0], exact=p[1], methods=methods, host=host,
        strip_prefix=strip, timeout=timeout, retries=retries or 0, websocket=bool(websocket),
        index=index, fallback=fallback, canary=canary, rate_limits=rate_limits,
        auth=auth, scopes=scopes, content_types=content_types, security_headers=security_headers,
        json_check=bool(json_check), json_max_bytes=json_max_bytes,
    )


def _parse_canary(c: _Collector, path: str, raw: Any) -> CanaryConfig | None:
    if not isinstance(raw, dict):
        c.error(path, f"expected a table {{ version, weight, header }}, got {_kind(raw)}")
        return None
    c.unknown_keys(path, raw, _CANARY_KEYS)
    version = c.name(f"{path}.version", raw.get("version"))
    weight = 0
    if "weight" in raw:
        w = c.integer(f"{path}.weight", raw["weight"], "routes[].canary.weight")
        if w is None:
            return None
        weight = w
    header = None
    if "header" in raw:
        h = c.string(f"{path}.header", raw["header"], plain=False)
        if h is None:
            return None
        if not _TOKEN.fullmatch(h) or len(h) > 128:
            c.error(f"{path}.header", f"expected a header name, got {h!r}")
            return None
        header = h
    if version is None:
        return None
    return CanaryConfig(version=version, weight=weight, header=header)


def _cross_check(c: _Collector, services: list[tuple[int, ServiceConfig]],
                 routes: list[tuple[int, RouteConfig]]) -> None:
    first_service: dict[str, int] = {}
    for i, s in services:
        if s.name in first_service:
            c.error(f"services[{i}].name", f"duplicate service name {s.name!r} (also services[{first_service[s.name]}])")
        else:
            first_service[s.name] = i
    first_route: dict[str, int] = {}
    for i, r in routes:
        if r.name in first_route:
            c.error(f"routes[{i}].name", f"duplicate route name {r.name!r} (also routes[{first_route[r.name]}])")
        else:
            first_route[r.name] = i
    # A route that an earlier one with the same host and path fully covers can never be matched:
    # almost always a copy-paste mistake, so say so instead of serving the first one silently.
    # Grouped by (host, path, exact), so 10,000 routes cost 10,000 lookups and not 50 million pairs.
    earlier: dict[tuple[str | None, str, bool], list[tuple[int, RouteConfig]]] = {}
    for i, r in routes:
        same = earlier.setdefault((r.host, r.path, r.exact), [])
        for j, e in same:
            if e.methods is None or (r.methods is not None and set(r.methods) <= set(e.methods)):
                c.error(f"routes[{i}]", f"never matched: routes[{j}] has the same host and path and takes all its methods")
                break
        same.append((i, r))


def parse_config(doc: dict[str, Any], source: str | None = None) -> GatewayConfig:
    """Validate a decoded TOML document; raise ConfigErrors listing every problem."""
    c = _Collector()
    c.unknown_keys("", doc, _TOP_KEYS)
    quotas = parse_quotas(c, doc["quotas"]) if "quotas" in doc else None
    services: list[tuple[int, ServiceConfig]] = []
    for i, raw in enumerate(c.table_list("services", doc.get("services", []))):
        s = _parse_service(c, f"services[{i}]", raw)
        if s is not None:
            services.append((i, s))
    # Names of every [[services]] table, even one with other problems: a route naming it is right.
    raw_services = doc.get("services")
    known = {
        raw["name"] for raw in (raw_services if isinstance(raw_services, list) else [])
        if isinstance(raw, dict) and isinstance(raw.get("name"), str)
    }
    routes: list[tuple[int, RouteConfig]] = []
    for i, raw in enumerate(c.table_list("routes", doc.get("routes", []))):
        r = _parse_route(c, f"routes[{i}]", raw, i, known)
        if r is not None:
            routes.append((i, r))
    _cross_check(c, services, routes)
    if c.problems:
        raise ConfigErrors(c.problems, source)
    svc = tuple(s for _, s in services)
    return GatewayConfig(
        services=svc, routes=tuple(r for _, r in routes), source=source,
        service_map={s.name: s for s in svc}, quotas=quotas,
    )


# Levels of arrays and tables below the document: SPEC §3's deepest key
# (quotas.orgs.<org>.user_limit) sits 3 down. tomllib recurses once or more per level and raised
# RecursionError on 10,000 levels, at a depth that depends on how much stack its caller had left;
# this limit makes the refusal the same from `check`, a start and a reload in a signal handler.
MAX_NESTING = 32
_TOO_DEEP = f"nesting too deep (more than {MAX_NESTING} levels of arrays and tables)"


def _too_deep(doc: dict[str, Any]) -> bool:
    """Is any value nested deeper than MAX_NESTING? Iterative: the check must not recurse itself."""
    stack: list[tuple[Any, int]] = [(doc, 0)]
    while stack:
        node, depth = stack.pop()
        children = node.values() if isinstance(node, dict) else node
        for child in children:
            if isinstance(child, dict | list):
                if depth + 1 > MAX_NESTING:
                    return True
                stack.append((child, depth + 1))
    return False


def loads_config(text: str, source: str | None = None) -> GatewayConfig:
    """Parse TOML text (tests, the bundled demo config, the supervisor's snapshot)."""
    where = source or "<toml>"
    if not text.strip():
        # An empty file served no routes at all, and a reload that read the file while an editor
        # rewrote it in place (truncate, then write) applied that emptiness to a serving gateway.
        # Running without routes on purpose is leaving GATEWAY_CONFIG unset.
        raise ConfigErrors([f"{where}: the file is empty (a configuration has [[services]] and [[routes]])"],
                           source)
    try:
        doc = tomllib.loads(text)
    except RecursionError:
        raise ConfigErrors([f"{where}: {_TOO_DEEP}"], source) from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigErrors([f"{source or '<toml>'}: invalid TOML: {exc}"], source) from None
    except ValueError:
        # tomllib lets int() raise on a decimal literal beyond Python's 4300-digit limit; no path
        # is known then, so name the line.
        m = re.search(r"[0-9_]{4300,}", text)
        line = f" (line {text.count(chr(10), 0, m.start()) + 1})" if m else ""
        raise ConfigErrors([f"{source or '<toml>'}: invalid TOML: an integer of over 4300 digits{line}"],
                           source) from None
    if _too_deep(doc):
        raise ConfigErrors([f"{where}: {_TOO_DEEP}"], source)
    return parse_config(doc, source)


def load_config(path: str | None) -> GatewayConfig:
    """Load and validate the TOML file; None → an empty config (no routes: every request is 404)."""
    if path is None:
        return GatewayConfig()
    try:
        with open(path, "rb") as f:
            data = f.read()
    except (OSError, ValueError) as exc:  # ValueError: a NUL in the path ("embedded null byte")
        shown = repr(path) if _CONTROL.search(path) else path
        raise ConfigErrors([f"{shown}: cannot read: {getattr(exc, 'strerror', None) or exc}"], path) from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigErrors([f"{path}: not UTF-8: {exc}"], path) from None
    config = loads_config(text, path)
    if not config.routes and path != os.environ.get(BOOT_CONFIG_ENV):
        # Valid, yet every request will be a 404: say so, once, naming the file. A worker booting
        # from the supervisor's snapshot stays quiet (the command that started it has warned).
        log.warning("%s has no [[routes]]: every request will answer 404", path)
    return config
