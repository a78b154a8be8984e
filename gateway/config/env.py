"""Environment variables (SPEC §2) → one immutable, typed `Settings`.

Rules, the same for every variable:
- surrounding whitespace is trimmed; a control character left inside (CR, LF, NUL...) is refused;
- an unset or empty (whitespace-only) variable takes its default: `GATEWAY_ADMIN_TOKEN=` must never
  become an empty bearer token that anybody can present;
- a bad value is reported as "GATEWAY_X: expected <accepted form>, got '<value>'", and every bad
  variable is reported, not just the first (EnvError.errors);
- a variable whose feature is not built yet is parsed and validated, and then refused with
  "not supported yet" when its value would turn that feature on: accepting and silently ignoring
  it would leave an operator believing, say, that a Redis store or JWKS check is in force.
"""
from __future__ import annotations

import ipaddress
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from typing import Any
from urllib.parse import urlsplit

from .errors import EnvError
from .ranges import RANGES

PREFIX = "GATEWAY_"
Network = ipaddress.IPv4Network | ipaddress.IPv6Network

# Applied with fullmatch(): `re.match` with `$` would also accept a trailing "\n".
_HOSTNAME = re.compile(r"(?=.{1,253}\Z)([A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*\.?")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_JWT_ALGORITHMS = frozenset(
    "HS256 HS384 HS512 RS256 RS384 RS512 PS256 PS384 PS512 ES256 ES384 ES512 EdDSA".split()
)


class _Bad(ValueError):
    """A value refused by a parser; the message is the part after "GATEWAY_X: "."""


class _Unsupported(ValueError):
    """A valid value that would turn on a feature that is not built yet."""


@dataclass(frozen=True, slots=True, repr=False)
class Settings:
    """Every SPEC §2 variable; field name = variable name without GATEWAY_, lowercased."""

    host: str = "0.0.0.0"
    port: int = 8080
    workers: int = 1
    config: str | None = None
    redis_url: str | None = None
    redis_cluster: bool = False
    redis_prefix: str = "gateway:"
    redis_timeout: float = 0.05
    shm_size: int = 64 << 20
    ratelimit_keys: int = 65536     # keys each rate-limit / quota table holds (gateway/filters/ratelimit.py)
    ratelimit_surge: int = 100      # rejections a second on one route (node-wide) that raise ratelimit_surge
    admin_host: str = "127.0.0.1"
    admin_port: int = 9901
    admin_token: str | None = None
    admin_hosts: tuple[str, ...] = ()
    admin_max_connections: int = 64
    metrics_allow: tuple[Network, ...] = tuple(
        ipaddress.ip_network(n) for n in "127.0.0.0/8,::1,10.0.0.0/8,172.16.0.0/12,192.168.0.0/16".split(",")
    )
    trusted_proxies: tuple[Network, ...] = ()
    jwt_secret: str | None = None
    jwt_public_key: str | None = None
    jwt_jwks_url: str | None = None
    jwt_issuer: str | None = None
    jwt_audience: str | None = None
    jwt_algorithms: tuple[str, ...] | None = None
    jwt_leeway: float = 30.0
    jwt_org_claim: str = "org"
    header_timeout: float = 10.0
    body_timeout: float = 30.0
    keepalive_timeout: float = 75.0
    upstream_connect_timeout: float = 5.0
    upstream_timeout: float = 30.0
    max_header_bytes: int = 16384
    max_headers: int = 100
    max_uri_bytes: int = 8192
    max_body_bytes: int = 10485760
    max_connections: int = 10000
    drain_timeout: float = 30.0
    worker_watchdog: float = 10.0
    reuse_port: bool = False        # GATEWAY_REUSE_PORT=shared: share the port with other gateways
    access_log: str = "off"
    audit_log: str = "stderr"
    alert_webhooks: tuple[str, ...] = ()
    alert_secret: str | None = None
    tracing: bool = False
    tls_cert: str | None = None         # PEM certificate chain: the data-plane listener speaks HTTPS
    tls_key: str | None = None          # PEM private key of tls_cert (reloaded with it on SIGHUP)
    admin_tls_cert: str | None = None   # the same for the admin listener (an addition to SPEC §2)
    admin_tls_key: str | None = None

    def masked(self) -> dict[str, str]:
        """The effective settings for `gateway check`: env name → display value, secrets hidden.

        Secrets (admin token, JWT secret, alert secret, the password of a Redis URL) show only
        whether they are set, never a fingerprint short enough to brute-force a weak secret.
        """
        out: dict[str, str] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            name = PREFIX + f.name.upper()
            if f.name in SECRET_FIELDS:
                out[name] = "<unset>" if value is None else "<set, hidden>"
            elif f.name == "redis_url" and value is not None:
                out[name] = mask_url_password(value)
            else:
                out[name] = _display(value)
        return out

    def __repr__(self) -> str:
        # The default dataclass repr would print secrets into any log line that shows settings.
        body = ", ".join(f"{k[len(PREFIX):].lower()}={v}" for k, v in self.masked().items())
        return f"Settings({body})"


SECRET_FIELDS = frozenset({"admin_token", "jwt_secret", "alert_secret"})


def _display(value: Any) -> str:
    if value is None:
        return "<unset>"
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, tuple):
        if not value:
            return "<none>"
        return ",".join(str(v) for v in value)
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def mask_url_password(url: str) -> str:
    """redis://user:secret@host:6379/0 → redis://user:***@host:6379/0 (anything else unchanged)."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    userinfo, _, hostinfo = parts.netloc.rpartition("@")
    user = userinfo.partition(":")[0]
    return parts._replace(netloc=f"{user}:***@{hostinfo}").geturl()


# --- value parsers: raw string (stripped, non-empty) → typed value, or _Bad("expected ...") -------

# Plain decimal only: int() also takes "1_000" and float() "1_0", "nan" and "infinity"; operators
# write plain numbers. The digit counts are bounded so that int() never meets Python's 4300-digit
# conversion limit (a ValueError that no parser here would have caught).
_INTEGER = re.compile(r"[+-]?[0-9]{1,30}")
_DECIMAL = re.compile(r"[+-]?(?:[0-9]{1,30}(?:\.[0-9]{0,30})?|\.[0-9]{1,30})(?:[eE][+-]?[0-9]{1,4})?")


def _shown(raw: str) -> str:
    """The refused value as quoted in a message; a pasted megabyte is cut, not echoed whole."""
    return repr(raw) if len(raw) <= 40 else f"{raw[:40]!r}... ({len(raw)} characters)"


def _number(var: str) -> Callable[[str], Any]:
    """A parser for the numeric variable `var`: its range comes from ranges.RANGES, the one table
    the README's "Numeric ranges" is generated from."""
    rng = RANGES[var]

    def parse(raw: str) -> int | float:
        value: int | float | None = None
        if rng.integer:
            if _INTEGER.fullmatch(raw):
                value = int(raw)
        elif _DECIMAL.fullmatch(raw):
            value = float(raw)   # may be inf ("1e999"): then out of range below
        if value is None or value not in rng:
            raise _Bad(f"expected {rng.form}, got {_shown(raw)}")
        return value

    return parse


_port = _number("GATEWAY_PORT")    # GATEWAY_ADMIN_PORT has the same range


def _listen_host(raw: str) -> str:
    try:
        ipaddress.ip_address(raw)
        return raw
    except ValueError:
        pass
    if _HOSTNAME.fullmatch(raw):
        return raw
    raise _Bad(f"expected an IP address or hostname, got {_shown(raw)}")


# Node memory marks each shared object's users with one bit per worker (gateway/state/memory.py):
# 62 workers at most, which no 2-socket machine's core count makes a real limit for one process tree.
MAX_WORKERS = int(RANGES["GATEWAY_WORKERS"].hi)


def _workers(raw: str) -> int:
    if raw.lower() == "auto":
        return min(os.cpu_count() or 1, MAX_WORKERS)
    try:
        return int(_number("GATEWAY_WORKERS")(raw))
    except _Bad:
        raise _Bad(f"expected {RANGES['GATEWAY_WORKERS'].form} or 'auto', got {_shown(raw)}") from None


def _cidrs(raw: str) -> tuple[Network, ...]:
    nets: list[Network] = []
    for item in raw.split(","):
        item = item.strip()
        if not item:
            continue
        try:
            # strict=False: "10.1.2.3/8" means the network containing it, as nginx's allow does.
            nets.append(ipaddress.ip_network(item, strict=False))
        except ValueError:
            raise _Bad(f"expected comma-separated IPs or CIDRs (10.0.0.0/8,::1), got {item!r}") from None
    return tuple(nets)


def _url(schemes: tuple[str, ...]) -> Callable[[str], str]:
    form = " or ".join(f"{s}://..." for s in schemes)

    def parse(raw: str) -> str:
        try:
            parts = urlsplit(raw)
            ok = parts.scheme in schemes and (bool(parts.hostname) or parts.scheme == "unix")
            if parts.scheme == "unix":
                ok = ok and bool(parts.path)
            parts.port  # noqa: B018 - raises ValueError on a bad port
        except ValueError:
            ok = False
        if not ok:
            raise _Bad(f"expected a URL {form}, got {_shown(raw)}")
        return raw

    return parse


def _urls(schemes: tuple[str, ...]) -> Callable[[str], tuple[str, ...]]:
    one = _url(schemes)

    def parse(raw: str) -> tuple[str, ...]:
        return tuple(one(u.strip()) for u in raw.split(",") if u.strip())

    return parse


def _hostnames(raw: str) -> tuple[str, ...]:
    names = tuple(h.strip().lower() for h in raw.split(",") if h.strip())
    for h in names:
        if not _HOSTNAME.fullmatch(h):
            raise _Bad(f"expected comma-separated host names (admin.example.com,gw-1), got {h!r}")
    return names


def _log_dest(raw: str) -> str:
    if raw in ("off", "stdout", "stderr"):
        return raw
    # A bare word ("stdrr") is far more likely a typo than a file name: a path must contain "/" or
    # an extension ("access.log", "./audit", "/var/log/gateway.jsonl").
    if "/" in raw or "." in raw:
        return raw
    raise _Bad(f"expected off, stdout, stderr or a file path, got {_shown(raw)}")


def _switch(on: str, off: str) -> Callable[[str], bool]:
    def parse(raw: str) -> bool:
        low = raw.lower()
        if low in (on, "true", "yes"):
            return True
        if low in (off, "false", "no"):
            return False
        raise _Bad(f"expected {on} or {off}, got {_shown(raw)}")

    return parse


def _text(raw: str) -> str:
    return raw


_SIZE_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30}


def _size(var: str) -> Callable[[str], int]:
    rng = RANGES[var]
    lo, hi = int(rng.lo), int(rng.hi)
    form = f"a size in bytes with an optional k/m/g suffix, {lo >> 20}m-{hi >> 30}g"

    def parse(raw: str) -> int:
        # nginx's size syntax (keys_zone=name:10m): plain bytes or k/m/g (binary multiples).
        m = re.fullmatch(r"([0-9]{1,30})([kKmMgG]?)", raw)
        if m is None:
            raise _Bad(f"expected {form}, got {_shown(raw)}")
        value = int(m.group(1)) * _SIZE_UNITS[m.group(2).lower()]
        if value not in rng:
            raise _Bad(f"expected {form}, got {_shown(raw)}")
        return value

    return parse


def _redis_prefix(raw: str) -> str:
    # Braces would turn the prefix into (part of) a Redis Cluster hash tag and move our keys'
    # slots; whitespace and control characters make keys nobody can type in redis-cli.
    if len(raw) > 64 or any(c in "{}" or not c.isprintable() or c.isspace() for c in raw):
        raise _Bad(f"expected up to 64 printable characters without spaces or braces, got {_shown(raw)}")
    return raw


def _algorithms(raw: str) -> tuple[str, ...]:
    algs = tuple(a.strip() for a in raw.split(",") if a.strip())
    bad = [a for a in algs if a not in _JWT_ALGORITHMS]
    if bad or not algs:
        raise _Bad(f"expected a comma-separated list of {', '.join(sorted(_JWT_ALGORITHMS))}, got {_shown(raw)}")
    return algs


def _jwt_secret(raw: str) -> str:
    # RFC 7518 §3.2: an HMAC key at least as long as the hash output (SPEC §2: shorter exits 2).
    if len(raw.encode()) < 32:
        raise _Bad(f"expected at least 32 bytes (RFC 7518 §3.2), got {len(raw.encode())} (value hidden)")
    return raw


def _public_key_file(raw: str) -> str:
    # Read and parsed here, so a missing file or a malformed PEM stops `check` and the start with
    # exit 2 naming the variable, not the first request.
    from gateway.security.keyset import KeyError_, load_public_key_file

    try:
        load_public_key_file(raw)
    except KeyError_ as exc:
        raise _Bad(f"expected the path of a PEM public key (RSA, EC or Ed25519): {exc}") from None
    return raw


def _pem_path(raw: str) -> str:
    # The pair is loaded together in _tls_consistency (a key alone says nothing): here only that
    # the file is there, so each missing one is named by its own variable.
    import os.path

    if not os.path.isfile(raw):
        raise _Bad(f"expected the path of a PEM file, got {_shown(raw)} (not a file)")
    return raw


def _tls_consistency(values: dict[str, Any], errors: list[EnvError]) -> list[EnvError]:
    """Each listener's certificate and key: both or neither, and they load together (a key that
    does not match its certificate, an expired-format PEM...): refused at start, exit 2."""
    from gateway.tls import check_server_pair

    out = []
    for prefix in ("", "admin_"):
        cert_var, key_var = f"GATEWAY_{prefix.upper()}TLS_CERT", f"GATEWAY_{prefix.upper()}TLS_KEY"
        if any(e.var in (cert_var, key_var) for e in errors):
            continue
        bad = check_server_pair(values.get(prefix + "tls_cert"), values.get(prefix + "tls_key"), cert_var, key_var)
        if bad is not None:
            out.append(EnvError(*bad))
    return out


def _jwt_consistency(values: dict[str, Any]) -> list[EnvError]:
    """GATEWAY_JWT_ALGORITHMS must name algorithms some configured key can verify."""
    algs = values.get("jwt_algorithms")
    if not algs:
        return []
    from gateway.security.jwt_check import ASYMMETRIC, HS
    from gateway.security.keyset import load_public_key_file

    usable: set[str] = set()
    if values.get("jwt_secret"):
        usable |= set(HS)
    if values.get("jwt_public_key"):
        usable |= set(load_public_key_file(values["jwt_public_key"])[1])
    if values.get("jwt_jwks_url"):
        usable |= set(ASYMMETRIC)
    bad = [a for a in algs if a not in usable]
    if bad:
        return [EnvError("GATEWAY_JWT_ALGORITHMS",
                         f"{', '.join(bad)} cannot be verified with the configured keys "
                         f"(HS* need GATEWAY_JWT_SECRET; RS/PS/ES/EdDSA need GATEWAY_JWT_PUBLIC_KEY of that type "
                         f"or GATEWAY_JWT_JWKS_URL)")]
    return []


def _no_controls(raw: str, *, secret: bool) -> None:
    # Checked before any parser, for every variable: a CR, LF or NUL inside a value is never
    # meant (nobody types one), and it would travel into file names, URLs, header values or log
    # lines. A refused secret is not echoed back.
    if _CONTROL.search(raw):
        shown = "(value hidden)" if secret else f"got {_shown(raw)}"
        raise _Bad(f"expected a value without control characters (CR, LF, NUL...), {shown}")


# --- gates: called with the parsed value; raise _Unsupported ("not supported yet") or _Bad to refuse -

def _tracing_gate(value: bool) -> None:
    # The OpenTelemetry SDK is an optional extra: "on" without it is refused at start, not at the
    # first request.
    if value:
        from gateway.observability.tracing import INSTALL_HINT, sdk_available

        if not sdk_available():
            raise _Bad(INSTALL_HINT)


# field name → (parser, gate or None). Defaults come from the Settings dataclass, so Settings()
# built directly (tests) and load_settings({}) are the same object.
_VARS: dict[str, tuple[Callable[[str], Any], Callable[[Any], None] | None]] = {
    "host": (_listen_host, None),
    "port": (_port, None),
    "workers": (_workers, None),
    "config": (_text, None),
    "redis_url": (_url(("redis", "rediss", "unix")), None),
    "redis_cluster": (_switch("1", "0"), None),
    "redis_prefix": (_redis_prefix, None),
    "redis_timeout": (_number("GATEWAY_REDIS_TIMEOUT"), None),
    "shm_size": (_size("GATEWAY_SHM_SIZE"), None),
    "ratelimit_keys": (_number("GATEWAY_RATELIMIT_KEYS"), None),
    "ratelimit_surge": (_number("GATEWAY_RATELIMIT_SURGE"), None),
    "admin_host": (_listen_host, None),
    "admin_port": (_port, None),
    "admin_token": (_text, None),
    "admin_hosts": (_hostnames, None),
    "admin_max_connections": (_number("GATEWAY_ADMIN_MAX_CONNECTIONS"), None),
    "metrics_allow": (_cidrs, None),
    "trusted_proxies": (_cidrs, None),
    "jwt_secret": (_jwt_secret, None),
    "jwt_public_key": (_public_key_file, None),
    "jwt_jwks_url": (_url(("https", "http")), None),
    "jwt_issuer": (_text, None),
    "jwt_audience": (_text, None),
    "jwt_algorithms": (_algorithms, None),
    "jwt_leeway": (_number("GATEWAY_JWT_LEEWAY"), None),
    "jwt_org_claim": (_text, None),
    "header_timeout": (_number("GATEWAY_HEADER_TIMEOUT"), None),
    "body_timeout": (_number("GATEWAY_BODY_TIMEOUT"), None),
    "keepalive_timeout": (_number("GATEWAY_KEEPALIVE_TIMEOUT"), None),
    "upstream_connect_timeout": (_number("GATEWAY_UPSTREAM_CONNECT_TIMEOUT"), None),
    "upstream_timeout": (_number("GATEWAY_UPSTREAM_TIMEOUT"), None),
    "max_header_bytes": (_number("GATEWAY_MAX_HEADER_BYTES"), None),
    "max_headers": (_number("GATEWAY_MAX_HEADERS"), None),
    "max_uri_bytes": (_number("GATEWAY_MAX_URI_BYTES"), None),
    "max_body_bytes": (_number("GATEWAY_MAX_BODY_BYTES"), None),
    "max_connections": (_number("GATEWAY_MAX_CONNECTIONS"), None),
    "drain_timeout": (_number("GATEWAY_DRAIN_TIMEOUT"), None),
    "worker_watchdog": (_number("GATEWAY_WORKER_WATCHDOG"), None),
    "reuse_port": (_switch("shared", "exclusive"), None),
    "access_log": (_log_dest, None),
    "audit_log": (_log_dest, None),
    "alert_webhooks": (_urls(("https", "http")), None),
    "alert_secret": (_text, None),
    "tracing": (_switch("on", "off"), _tracing_gate),
    "tls_cert": (_pem_path, None),
    "tls_key": (_pem_path, None),
    "admin_tls_cert": (_pem_path, None),
    "admin_tls_key": (_pem_path, None),
}

VARIABLES: tuple[str, ...] = tuple(PREFIX + name.upper() for name in _VARS)


def load_settings(environ: Mapping[str, str]) -> Settings:
    """Parse every SPEC §2 variable; raise one EnvError listing every bad one."""
    values: dict[str, Any] = {}
    errors: list[EnvError] = []
    for name, (parse, gate) in _VARS.items():
        var = PREFIX + name.upper()
        raw = environ.get(var)
        if raw is None or not raw.strip():
            continue
        raw = raw.strip()
        try:
            _no_controls(raw, secret=name in SECRET_FIELDS)
            value = parse(raw)
            if gate is not None:
                gate(value)
        except (_Bad, _Unsupported) as exc:
            errors.append(EnvError(var, str(exc)))
            continue
        values[name] = value
    if values.get("redis_cluster") and "redis_url" not in values and not any(
            e.var == "GATEWAY_REDIS_URL" for e in errors):
        errors.append(EnvError("GATEWAY_REDIS_CLUSTER", "needs GATEWAY_REDIS_URL (a node of the cluster)"))
    if not any(e.var.startswith("GATEWAY_JWT_") for e in errors):
        errors += _jwt_consistency(values)
    errors += _tls_consistency(values, errors)
    if not any(e.var in _LISTENER_VARS for e in errors):
        clash = _listener_clash(Settings(**values))
        if clash:   # named after a port variable the operator set (the defaults never clash)
            errors.append(EnvError("GATEWAY_ADMIN_PORT" if "admin_port" in values else "GATEWAY_PORT", clash))
    if errors:
        raise EnvError(errors[0].var, errors[0].message, errors[1:])
    return Settings(**values)


_LISTENER_VARS = frozenset({"GATEWAY_HOST", "GATEWAY_PORT", "GATEWAY_ADMIN_HOST", "GATEWAY_ADMIN_PORT"})


def _hosts_overlap(a: str, b: str) -> bool:
    """Could listeners bound to `a` and `b` on one port take each other's connections?"""
    try:
        ia, ib = ipaddress.ip_address(a), ipaddress.ip_address(b)
    except ValueError:
        # A host name is resolved only when bound, and may be any address ("localhost" is
        # 127.0.0.1 and ::1): it cannot be told apart from anything else on the same port.
        return True
    for x, y in ((ia, ib), (ib, ia)):
        if x.version == 6 and x.is_unspecified:
            return True       # "::" is dual-stack on Linux: it takes IPv4 too
        if x.version == 4 and x.is_unspecified and y.version == 4:
            return True       # "0.0.0.0" takes every IPv4 address
    mapped = [ip.ipv4_mapped if ip.version == 6 and ip.ipv4_mapped else ip for ip in (ia, ib)]
    return mapped[0] == mapped[1]


def _listener_clash(s: Settings) -> str | None:
    # The data and admin listeners sharing an address: `check` passed, then with workers the admin
    # listener (in the supervisor) held the port and no worker could bind it: zero workers.
    if s.port != s.admin_port or not _hosts_overlap(s.host, s.admin_host):
        return None
    return (f"the admin listener (GATEWAY_ADMIN_HOST={s.admin_host}, GATEWAY_ADMIN_PORT={s.admin_port}) "
            f"overlaps the data listener (GATEWAY_HOST={s.host}, GATEWAY_PORT={s.port}): "
            f"give them different ports, or distinct IP addresses")


def unknown_variables(environ: Mapping[str, str]) -> list[str]:
    """GATEWAY_* names that are not SPEC §2 variables (likely typos), for a warning in `check`.

    Not an error: build and test tooling uses the same prefix (GATEWAY_BUILD_ONLY, ...).
    """
    known = set(VARIABLES)
    return sorted(k for k in environ if k.startswith(PREFIX) and k not in known)
