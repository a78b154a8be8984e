"""The validated TOML configuration as frozen dataclasses (what schema.py produces).

Plain data, no behaviour: gateway/runtime.py compiles it into Router, Services and pools. Frozen so a
config shared by workers and reloads can never be changed behind a running router's back.
"""
from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class TargetConfig:
    url: str                    # as written, e.g. "http://127.0.0.1:9001"
    host: str                   # lowercased hostname or IP (IPv6 without brackets)
    port: int
    weight: int = 1
    version: str | None = None
    tls: bool = False           # https://: the pool speaks TLS, SNI and verification on `host`

    @property
    def id(self) -> str:
        """Stable across reloads: the same upstream keeps the same id (and pool)."""
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


@dataclass(frozen=True, slots=True)
class HealthConfig:
    """[services.health]: active checks (gateway/discovery/health.py)."""
    path: str = "/health"
    interval: float = 5.0
    timeout: float = 1.0
    healthy_threshold: int = 2
    unhealthy_threshold: int = 3
    max_backoff: float = 60.0


@dataclass(frozen=True, slots=True)
class BreakerConfig:
    """[services.breaker] (SPEC §3): one circuit per target (gateway/discovery/breakers.py)."""
    failure_threshold: int = 5
    error_rate: float = 0.5
    min_requests: int = 20
    window: float = 10.0
    open_timeout: float = 60.0           # doubles on repeated trips, capped at 8x (README)
    half_open_requests: int = 3
    success_threshold: int = 3
    failure_statuses: tuple[int, ...] | None = None   # None: every 5xx


@dataclass(frozen=True, slots=True)
class FallbackConfig:
    """A route's `fallback`: what it answers when its service has no target to use."""
    status: int = 503
    body: bytes | None = None            # None: the JSON error body of SPEC §4
    content_type: str = "application/json"


@dataclass(frozen=True, slots=True)
class ServiceConfig:
    name: str
    targets: tuple[TargetConfig, ...]
    balancer: str = "round_robin"
    hash_key: str | None = None          # consistent_hash: ip | header:NAME | cookie:NAME | claim:NAME
    health: HealthConfig | None = None   # None: passive health only
    breaker: BreakerConfig | None = None
    tls_verify: bool = True              # https:// targets: verify the certificate and its host name
    ca_file: str | None = None           # ... against this CA bundle (PEM) instead of the system's


@dataclass(frozen=True, slots=True)
class CanaryConfig:
    """A route's `canary`: `weight` % of users to the targets of `version` (gateway/discovery/canary.py)."""
    version: str
    weight: int = 0
    header: str | None = None          # its value `always` / `never` overrides the cohort


@dataclass(frozen=True, slots=True)
class RateLimitConfig:
    """One `[[routes.rate_limits]]` policy (SPEC §3)."""
    key: str                    # ip | user | org | api_key | route | header:<lowercased name>
    limit: int
    window: float
    algorithm: str = "sliding_window"   # sliding_window | token_bucket
    burst: int = 0              # token_bucket only

    def as_dict(self) -> dict[str, object]:
        d: dict[str, object] = {"key": self.key, "limit": self.limit, "window": self.window,
                                "algorithm": self.algorithm}
        if self.algorithm == "token_bucket":
            d["burst"] = self.burst
        return d


@dataclass(frozen=True, slots=True)
class QuotaLimit:
    """A quota: `limit` requests per `window` seconds; `user_limit` only on an org's override."""
    limit: int
    window: float
    user_limit: int | None = None

    def as_dict(self) -> dict[str, object]:
        d: dict[str, object] = {"limit": self.limit, "window": self.window}
        if self.user_limit is not None:
            d["user_limit"] = self.user_limit
        return d


@dataclass(frozen=True, slots=True)
class QuotasConfig:
    """`[quotas]` (SPEC §3): hierarchical per-user and per-org quotas on every route."""
    default_user: QuotaLimit | None = None
    default_org: QuotaLimit | None = None
    orgs: dict[str, QuotaLimit] = field(default_factory=dict)
    users: dict[str, QuotaLimit] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class RouteConfig:
    name: str
    service: str
    path: str                   # without the "=" of an exact route; always starts with "/"
    exact: bool = False
    methods: tuple[str, ...] | None = None   # uppercased, deduplicated; None = every method
    host: str | None = None     # lowercased, no port, no trailing dot
    strip_prefix: bool = False
    timeout: float | None = None
    retries: int = 0
    websocket: bool = False     # Upgrade requests (WebSocket and others) are tunnelled
    auth: tuple[str, ...] = ()              # "jwt" | "api_key": any one admits; () = public
    scopes: tuple[str, ...] = ()            # all required (403 otherwise)
    content_types: tuple[str, ...] | None = None   # lowercased type/subtype; None = any
    security_headers: bool = False          # add the API security response headers
    json_check: bool = False                # JSON request bodies must parse (400), held up to json_max_bytes (413)
    json_max_bytes: int = 65536
    index: int = 0              # position in the file: ties are broken by declaration order
    fallback: FallbackConfig | None = None
    canary: CanaryConfig | None = None
    rate_limits: tuple[RateLimitConfig, ...] = ()


@dataclass(frozen=True, slots=True)
class GatewayConfig:
    services: tuple[ServiceConfig, ...] = ()
    routes: tuple[RouteConfig, ...] = ()
    source: str | None = None   # the file it came from; None for load_config(None) or a string
    quotas: QuotasConfig | None = None
    service_map: dict[str, ServiceConfig] = field(default_factory=dict, compare=False, repr=False)

    def service(self, name: str) -> ServiceConfig:
        return self.service_map[name]
