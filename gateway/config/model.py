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

    @property
    def id(self) -> str:
        """Stable across reloads: the same upstream keeps the same id (and pool)."""
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


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
    breaker: BreakerConfig | None = None


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
    index: int = 0              # position in the file: ties are broken by declaration order
    fallback: FallbackConfig | None = None


@dataclass(frozen=True, slots=True)
class GatewayConfig:
    services: tuple[ServiceConfig, ...] = ()
    routes: tuple[RouteConfig, ...] = ()
    source: str | None = None   # the file it came from; None for load_config(None) or a string
    service_map: dict[str, ServiceConfig] = field(default_factory=dict, compare=False, repr=False)

    def service(self, name: str) -> ServiceConfig:
        return self.service_map[name]
