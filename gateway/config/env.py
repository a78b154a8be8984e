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
    reuse_port: bool = False        # GATEWAY_REUSE_PORT=shared: share the port with other gateways
    config: str | None = None
    log_level: str = "info"         # applied by gateway/logs.py before Settings exist; here for check/help
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
        """The effective settings for `gateway check` and `GET /config`: env name → display value.

        Secrets (every Var marked secret: admin token, JWT secret, alert secret) show only whether
        they are set, never a fingerprint short enough to brute-force a weak secret. URLs lose their
        password (`redis://user:***@host`, a `password=` query parameter too); webhook URLs keep
        only scheme and host, since their paths commonly are the credential (Slack, Teams...).
        """
        out: dict[str, str] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            name = PREFIX + f.name.upper()
            if f.name in SECRET_FIELDS:
                out[name] = "<unset>" if value is None else "<set, hidden>"
            elif f.name in ("redis_url", "jwt_jwks_url") and value is not None:
                out[name] = mask_url_password(value)
            elif f.name == "alert_webhooks" and value:
                out[name] = ",".join(mask_url_path(u) for u in value)
            else:
                out[name] = _display(value)
        return out

    def __repr__(self) -> str:
        # The default dataclass repr would print secrets into any log line that shows settings.
        body = ", ".join(f"{k[len(PREFIX):].lower()}={v}" for k, v in self.masked().items())
        return f"Settings({body})"


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


_PASSWORD_PARAM = re.compile(r"(?i)((?:^|&)(?:password|passwd|pass|token|secret|key)=)[^&]*")


def mask_url_password(url: str) -> str:
    """redis://user:secret@host:6379/0 → redis://user:***@host:6379/0; a `password=` (or token,
    secret, key) query parameter's value → ***; anything else unchanged."""
    try:
        parts = urlsplit(url)
        password = parts.password
    except ValueError:
        return "<unparsable URL, hidden>"
    if password is not None:
        userinfo, _, hostinfo = parts.netloc.rpartition("@")
        user = userinfo.partition(":")[0]
        parts = parts._replace(netloc=f"{user}:***@{hostinfo}")
    if parts.query:
        parts = parts._replace(query=_PASSWORD_PARAM.sub(r"\1***", parts.query))
    return parts.geturl()


def mask_url_path(url: str) -> str:
    """https://user:pw@hooks.example.com/T0/B0/XXXX?x=1 → https://hooks.example.com/***: a webhook
    URL's credential is often its path or query, so only where it goes is shown."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        port = f":{parts.port}" if parts.port else ""
    except ValueError:
        return "<unparsable URL, hidden>"
    host = f"[{host}]" if ":" in host else host
    hidden = "/***" if parts.path.strip("/") or parts.query or parts.fragment else ""
    return f"{parts.scheme}://{host}{port}{hidden}"


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


def _log_level(raw: str) -> str:
    # The same choices gateway/logs.py applies (it reads the variable itself, before Settings
    # exist, so that a bad Settings value can already be logged); lowercased as it does.
    from gateway.logs import LEVELS

    low = raw.lower()
    if low not in LEVELS:
        raise _Bad(f"expected one of {', '.join(LEVELS)}, got {_shown(raw)}")
    return low


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


@dataclass(frozen=True, slots=True)
class Var:
    """One environment variable: how it is parsed, and what `--help` and docs/configuration.md say.

    The one table of variables (VARS below): load_settings() reads it, `gateway --help` prints it,
    docs/configuration.md is generated from it (python -m gateway.config.reference --write) and a test keeps
    that file equal to what this table generates. Defaults come from the Settings dataclass.
    """

    parse: Callable[[str], Any]
    doc: str                                    # markdown: what it does, the accepted forms
    gate: Callable[[Any], None] | None = None   # called with the parsed value; may refuse it
    secret: bool = False                        # never shown: `<set, hidden>` / `<unset>`
    example: str | None = None                  # a value to show in the reference
    shown_default: str | None = None            # the default as an operator writes it, when the
                                                # typed default reads differently (`64m`, `0`)


# field name → Var. Defaults come from the Settings dataclass, so Settings() built directly (tests)
# and load_settings({}) are the same object.
VARS: dict[str, Var] = {
    "host": Var(_listen_host, "address of the data-plane listener (an IP address or a host name that resolves "
                "to one of this machine's addresses)", example="0.0.0.0"),
    "port": Var(_port, "port of the data-plane listener", example="8080"),
    "workers": Var(_workers, "worker processes sharing the port (`SO_REUSEPORT`), 1-62; `auto` = the CPU count "
                   "(at most 62: node memory marks each object's users with one bit per worker). More than 1 "
                   "starts a supervisor that runs the admin listener and replaces crashed workers",
                   example="auto"),
    "reuse_port": Var(_switch("shared", "exclusive"), "`shared`: share the listening address with other gateways "
                      "that set it too (an old and a new version during a handover); `exclusive`: a second "
                      "gateway on the same address exits 1", example="shared", shown_default="exclusive"),
    "config": Var(_text, "path of the TOML file (services, routes, policies; see below). Unset: no routes, every "
                  "request answers 404. An empty or whitespace-only file is refused at start (exit 2) and at reload "
                  "(the running config stays: an editor that truncates the file before writing it never empties a "
                  "serving gateway); a file without `[[routes]]` starts with a warning naming it; nesting deeper "
                  "than 32 levels of arrays and tables is refused",
                  example="/etc/gateway/gateway.toml"),
    "log_level": Var(_log_level, "`debug`, `info`, `warning`, `error`; logs go to stderr, one line per event: "
                     "`<UTC time> gateway[pid] LEVEL component: message`. An unexpected exception that reaches an event "
                     "loop is one `ERROR loop:` line (type, message, where it was raised, what the loop was running); "
                     "repeats of the same type at the same place within 10 s are counted into one `N more "
                     "suppressed` line; the traceback is kept (folded onto the line) only at `debug`",
                     example="debug"),
    "admin_host": Var(_listen_host, "address of the admin listener (health, metrics, dashboard, admin API). "
                      "Never the data listener's address: on the same port both hosts must be distinct IP "
                      "addresses (`0.0.0.0` overlaps every IPv4 address, `::` every address, a host name anything), "
                      "else exit 2 naming the four variables", example="127.0.0.1"),
    "admin_port": Var(_port, "port of the admin listener", example="9901"),
    "admin_token": Var(_text, "bearer token for admin writes and for `GET /config` and `GET /routes` "
                       "(`Authorization: Bearer <token>`, compared byte for byte in constant time). Unset: "
                       "the admin API is read-only", secret=True, example="$(openssl rand -hex 32)"),
    "admin_hosts": Var(_hostnames, "extra `Host` names the admin API answers to (comma-separated); it always "
                       "answers the address a connection came in on and `localhost`, anything else gets 421 "
                       "(DNS rebinding)", example="admin.internal,gw-1"),
    "admin_max_connections": Var(_number("GATEWAY_ADMIN_MAX_CONNECTIONS"),
                                 "admin connections at once; the next ones get 503 at once and are closed "
                                 "(nginx's `limit_conn`), and beyond twice that accepting pauses (connections wait "
                                 "in the backlog)",
                                 example="16"),
    "metrics_allow": Var(_cidrs, "comma-separated CIDRs whose TCP peer address may read `/metrics`, `/status` "
                         "and `/dashboard` (403 otherwise; never decided by a header); an invalid CIDR exits 2",
                         example="10.0.0.0/8,::1"),
    "trusted_proxies": Var(_cidrs, "CIDRs whose `X-Forwarded-For` is believed (the client address of rate "
                           "limits, logs and `ip` hashing)", example="10.0.0.0/8"),
    "redis_url": Var(_url(("redis", "rediss", "unix")), "shared state store: `redis://[:password@]host:port/db`, "
                     "`rediss://...` (TLS; a private CA as `?ssl_ca_certs=/path/ca.pem`), "
                     "`unix:///path/redis.sock`. Unset: embedded state, exact per node across workers. The "
                     "password is masked wherever the URL is shown", example="redis://:secret@10.0.0.7:6379/0"),
    "redis_cluster": Var(_switch("1", "0"), "`1`: the URL names a node of a Redis Cluster (every key carries "
                         "the `{state}` hash tag, so each script touches one slot); needs `GATEWAY_REDIS_URL`",
                         example="1", shown_default="0"),
    "redis_prefix": Var(_redis_prefix, "prefix of every Redis key and channel; up to 64 printable characters, "
                        "no spaces or braces", example="gw-prod:"),
    "redis_timeout": Var(_number("GATEWAY_REDIS_TIMEOUT"), "seconds: the time budget of any one Redis call; a "
                         "slower answer counts as Redis unavailable for that call. Health probes and full state "
                         "loads get `max(this, 0.5)`. A call that must open a new pooled connection pays the "
                         "connect (and with `rediss://` the TLS handshake) inside its budget: with TLS, allow for "
                         "it", example="0.1"),
    "shm_size": Var(_size("GATEWAY_SHM_SIZE"), "node memory for shared objects (breakers, limiter tables, "
                    "counters), bytes or with a `k`/`m`/`g` suffix; pages are committed only when used. A config "
                    "whose objects do not fit is refused (exit 2, or a refused reload)", example="256m",
                    shown_default="64m"),
    "ratelimit_keys": Var(_number("GATEWAY_RATELIMIT_KEYS"), "keys each rate-limit policy and quota table tracks "
                          "at once. A table takes 40 bytes per key (32-byte slots at 80 % load, so 2.6 MB at the "
                          "default) of node memory (`GATEWAY_SHM_SIZE`, committed as keys arrive)",
                          example="1000000"),
    "ratelimit_surge": Var(_number("GATEWAY_RATELIMIT_SURGE"), "rejections per second on one route, node-wide, "
                           "at which the `ratelimit_surge` event fires (details: `route`, `rejections_per_second`, "
                           "`threshold`); like every event at most once per 60 s per node and route",
                           example="500"),
    "jwt_secret": Var(_jwt_secret, "HS256/384/512 key, at least 32 bytes (RFC 7518 §3.2; shorter exits 2); also "
                      "signs `gateway jwt mint` and the token service", secret=True,
                      example="$(openssl rand -base64 48)"),
    "jwt_public_key": Var(_public_key_file, "path of a PEM public key: RSA (≥ 2048 bits: RS*/PS*), EC "
                          "P-256/384/521 (ES256/384/512), Ed25519 (EdDSA). Read and parsed at start: unreadable, "
                          "malformed, private or unsupported → exit 2 naming it",
                          example="/etc/gateway/jwt.pub.pem"),
    "jwt_jwks_url": Var(_url(("https", "http")), "`http(s)://` JWKS endpoint; fetched at start in the background, "
                        "every 300 s, and on an unknown `kid` (at most once per 10 s)", example="https://idp.example.com/.well-known/jwks.json"),
    "jwt_issuer": Var(_text, "required `iss` when set", example="https://idp.example.com/"),
    "jwt_audience": Var(_text, "required `aud` when set (`aud` may be a list containing it)", example="api"),
    "jwt_algorithms": Var(_algorithms, "comma-separated allow-list of HS256/384/512, RS256/384/512, "
                          "PS256/384/512, ES256/384/512, EdDSA; unset: every algorithm of the configured keys. An "
                          "algorithm no configured key can verify exits 2; `none` never", example="RS256,ES256",
                          shown_default="from the key types"),
    "jwt_leeway": Var(_number("GATEWAY_JWT_LEEWAY"), "seconds of clock skew accepted on `exp`, `nbf` and `iat`",
                      example="5"),
    "jwt_org_claim": Var(_text, "claim naming the organization (quotas per org)", example="tenant"),
    "header_timeout": Var(_number("GATEWAY_HEADER_TIMEOUT"), "seconds for the whole request head (absolute, not "
                          "reset per byte) → 408", example="5"),
    "body_timeout": Var(_number("GATEWAY_BODY_TIMEOUT"), "seconds without request-body progress → 408; also each "
                        "stall of a response body", example="60"),
    "keepalive_timeout": Var(_number("GATEWAY_KEEPALIVE_TIMEOUT"), "idle seconds before a downstream connection "
                             "is closed", example="30"),
    "upstream_connect_timeout": Var(_number("GATEWAY_UPSTREAM_CONNECT_TIMEOUT"), "seconds to connect to a target "
                                    "→ 502", example="1"),
    "upstream_timeout": Var(_number("GATEWAY_UPSTREAM_TIMEOUT"), "seconds from the last request byte written "
                            "upstream to the response head → 504 (upload time never counts; an upstream that stops "
                            "draining a request body gets `GATEWAY_BODY_TIMEOUT`, then 504); a route's `timeout` "
                            "overrides it", example="10"),
    "max_header_bytes": Var(_number("GATEWAY_MAX_HEADER_BYTES"), "bytes of a request head → 431; upstream "
                            "response heads (and trailers) get the same byte and field limits → 502, the upstream "
                            "connection closed, one error logged", example="32768"),
    "max_headers": Var(_number("GATEWAY_MAX_HEADERS"), "header fields of a request → 431", example="200"),
    "max_uri_bytes": Var(_number("GATEWAY_MAX_URI_BYTES"), "bytes of a request target → 414", example="16384"),
    "max_body_bytes": Var(_number("GATEWAY_MAX_BODY_BYTES"), "bytes of a request body → 413 (bodies stream, they "
                          "are never buffered whole)", example="104857600"),
    "max_connections": Var(_number("GATEWAY_MAX_CONNECTIONS"), "downstream connections per worker; beyond it new "
                           "connections wait in the kernel backlog", example="50000"),
    "drain_timeout": Var(_number("GATEWAY_DRAIN_TIMEOUT"), "seconds of graceful drain on SIGTERM/SIGINT",
                         example="60"),
    "worker_watchdog": Var(_number("GATEWAY_WORKER_WATCHDOG"), "seconds of silence after which a worker is killed "
                           "and replaced; `/ready` counts only workers heard from in the last 3 s", example="20"),
    "access_log": Var(_log_dest, "`off`, `stdout`, `stderr` or a file path (it must contain `/` or `.`): one JSON "
                      "line per request; a file is opened for appending (several workers share it, whole lines per "
                      "write) and reopened on `SIGHUP` and `SIGUSR1` (logrotate); a file that cannot be opened "
                      "stops start-up naming this variable",
                      example="/var/log/gateway/access.jsonl"),
    "audit_log": Var(_log_dest, "`off`, `stdout`, `stderr` or a file path: JSON lines for auth failures, key and "
                     "token changes, admin changes, rejected requests", example="/var/log/gateway/audit.jsonl"),
    "alert_webhooks": Var(_urls(("https", "http")), "comma-separated `http(s)://` URLs that receive each alert "
                          "(JSON POST, SPEC §7); a malformed URL exits 2. Shown as scheme and host only (their paths "
                          "often hold a token)",
                          example="https://hooks.example.com/T000/B000/XXXX"),
    "alert_secret": Var(_text, "HMAC-SHA256 key of `X-Gateway-Signature: sha256=<hex>` on each alert (unset: "
                        "alerts are unsigned, with a warning at start)", secret=True,
                        example="$(openssl rand -hex 32)"),
    "tracing": Var(_switch("on", "off"), "`on`: a span per request exported with the OpenTelemetry SDK over "
                   "OTLP/HTTP, configured by the standard `OTEL_*` variables (`OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`, "
                   "`OTEL_SERVICE_NAME`, `OTEL_TRACES_SAMPLER`...). The SDK is an optional extra: "
                   "`pip install '.[otel]'`; `on` without it exits 2 naming the variable",
                   gate=_tracing_gate, example="on", shown_default="off"),
    "tls_cert": Var(_pem_path, "PEM certificate chain: the data-plane listener speaks HTTPS only (TLS 1.2/1.3, ALPN "
                    "`http/1.1`, `X-Forwarded-Proto: https`); loaded with `GATEWAY_TLS_KEY` at start (both or neither; "
                    "exit 2 naming it) and again on `SIGHUP` for new connections", example="/etc/gateway/tls/fullchain.pem"),
    "tls_key": Var(_pem_path, "PEM private key of `GATEWAY_TLS_CERT`", example="/etc/gateway/tls/privkey.pem"),
    "admin_tls_cert": Var(_pem_path, "the same for the admin listener (an addition to SPEC §2)",
                          example="/etc/gateway/tls/admin.pem"),
    "admin_tls_key": Var(_pem_path, "PEM private key of `GATEWAY_ADMIN_TLS_CERT`", example="/etc/gateway/tls/admin.key"),
}

VARIABLES: tuple[str, ...] = tuple(PREFIX + name.upper() for name in VARS)
SECRET_FIELDS = frozenset(name for name, var in VARS.items() if var.secret)


def load_settings(environ: Mapping[str, str]) -> Settings:
    """Parse every SPEC §2 variable; raise one EnvError listing every bad one."""
    values: dict[str, Any] = {}
    errors: list[EnvError] = []
    for name, spec in VARS.items():
        var = PREFIX + name.upper()
        raw = environ.get(var)
        if raw is None or not raw.strip():
            continue
        raw = raw.strip()
        try:
            _no_controls(raw, secret=name in SECRET_FIELDS)
            value = spec.parse(raw)
            if spec.gate is not None:
                spec.gate(value)
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
