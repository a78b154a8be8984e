"""The range of every numeric setting, environment variable and TOML key, in one table.

SPEC §2 and §3: every numeric value has a documented range and a value outside it is invalid. Without
one, `GATEWAY_MAX_CONNECTIONS=9223372036854775808` passed `gateway check` and then an OverflowError
stopped the listener. env.py and schema.py check values against RANGES (the messages quote the
range), the README's "Numeric ranges" table is this table as markdown_table() prints it, and
tests/config/test_ranges.py keeps the README, the code and the table from drifting apart.

How the ranges were chosen: wide enough for real use (SPEC §3: counts up to at least 1,000,000,
durations up to at least one day), narrow enough that every value fits the C types and timers the
data plane puts it in, and never so wide that an obviously mistyped value (a timeout in
milliseconds, a size with three zeros too many) passes. Durations are seconds, 0.001 at the least:
the coarse per-loop timer cannot honour less than a millisecond anyway.

TOML keys are written as paths with `[]` for any array index and `<name>` for a table key of the
operator's choosing. Keys of features not built yet are listed too: their range is decided here so
that the README documents it, and their parser uses it the day the feature lands (until then the
key itself is refused with "not supported yet").
"""
from __future__ import annotations

from dataclasses import dataclass

DAY = 86400
MONTH = 31 * DAY
KIB, MIB, GIB = 1 << 10, 1 << 20, 1 << 30


@dataclass(frozen=True, slots=True)
class Range:
    """Inclusive bounds of one numeric setting, and how to say them."""

    key: str          # "GATEWAY_MAX_CONNECTIONS" or "routes[].timeout"
    lo: int | float
    hi: int | float
    kind: str         # "count" (integer), "bytes" (integer), "seconds" (number), "ratio" (number)
    why: str = ""     # the reason for the bounds, for the README

    @property
    def integer(self) -> bool:
        return self.kind in ("count", "bytes")

    def __contains__(self, value: object) -> bool:
        return isinstance(value, int | float) and not isinstance(value, bool) and self.lo <= value <= self.hi

    @property
    def span(self) -> str:
        """"1-1000000", "1024-1048576 (1 KiB-1 MiB)", "0.001-86400"."""
        text = f"{_num(self.lo)}-{_num(self.hi)}"
        if self.kind == "bytes" and self.hi >= KIB:
            text += f" ({_iec(int(self.lo))}-{_iec(int(self.hi))})"
        return text

    @property
    def form(self) -> str:
        """What an error message says was expected."""
        if self.integer:
            return f"an integer {self.span}"
        if self.kind == "seconds":
            return f"a number of seconds {self.span}"
        return f"a number {self.span}"


def _num(v: int | float) -> str:
    return str(int(v)) if float(v).is_integer() else f"{v:g}"


def _iec(n: int) -> str:
    for unit, size in (("GiB", GIB), ("MiB", MIB), ("KiB", KIB)):
        if n >= size and n % size == 0:
            return f"{n // size} {unit}"
    return f"{n} B"


_T = "a duration: up to a day (SPEC §3); 1 ms is the timer's resolution"
_COUNT = "a count: up to 1,000,000 (SPEC §3)"
_LIMIT = "requests per window: up to 10^9 (SPEC §3 asks for at least 10^6)"

_TABLE: tuple[Range, ...] = (
    # --- environment (SPEC §2) ----------------------------------------------------------------
    Range("GATEWAY_PORT", 1, 65535, "count", "a TCP port"),
    Range("GATEWAY_ADMIN_PORT", 1, 65535, "count", "a TCP port"),
    Range("GATEWAY_WORKERS", 1, 62, "count",
          "or `auto`; node memory marks each object's users with one bit per worker (62 usable)"),
    Range("GATEWAY_REDIS_TIMEOUT", 0.001, 10, "seconds", "a budget per Redis call, not a session timeout"),
    Range("GATEWAY_SHM_SIZE", MIB, 64 * GIB, "bytes", "also written with a k/m/g suffix (`64m`)"),
    Range("GATEWAY_RATELIMIT_KEYS", 16, 100_000_000, "count",
          "keys per rate-limit or quota table, 40 bytes each in node memory (`GATEWAY_SHM_SIZE`)"),
    Range("GATEWAY_RATELIMIT_SURGE", 1, 1_000_000_000, "count",
          "rejections per second on one route, node-wide, that raise the `ratelimit_surge` event"),
    Range("GATEWAY_ADMIN_MAX_CONNECTIONS", 1, 10000, "count", "the admin API is an operator's tool, not a data plane"),
    Range("GATEWAY_JWT_LEEWAY", 0, 3600, "seconds", "clock skew; more than an hour is a broken clock, not skew"),
    Range("GATEWAY_HEADER_TIMEOUT", 0.001, DAY, "seconds", _T),
    Range("GATEWAY_BODY_TIMEOUT", 0.001, DAY, "seconds", _T),
    Range("GATEWAY_KEEPALIVE_TIMEOUT", 0.001, DAY, "seconds", _T),
    Range("GATEWAY_UPSTREAM_CONNECT_TIMEOUT", 0.001, DAY, "seconds", _T),
    Range("GATEWAY_UPSTREAM_TIMEOUT", 0.001, DAY, "seconds", _T),
    Range("GATEWAY_MAX_HEADER_BYTES", KIB, MIB, "bytes",
          "below 1 KiB common browsers' heads do not fit; above 1 MiB a head is an attack"),
    Range("GATEWAY_MAX_HEADERS", 1, 10000, "count", "nginx and Envoy default to 100"),
    Range("GATEWAY_MAX_URI_BYTES", 256, MIB, "bytes", "the default 8192 follows RFC 9110 §4.1 (at least 8000); 256 still holds an API path"),
    Range("GATEWAY_MAX_BODY_BYTES", 1, 64 * GIB, "bytes", "bodies stream, they are never buffered whole"),
    Range("GATEWAY_MAX_CONNECTIONS", 1, 1_000_000, "count", "per worker; each connection holds a file descriptor"),
    Range("GATEWAY_DRAIN_TIMEOUT", 0, DAY, "seconds", "0: stop without waiting for in-flight requests"),
    Range("GATEWAY_WORKER_WATCHDOG", 1, DAY, "seconds", "below a second a busy worker looks like a hung one"),
    # --- TOML (SPEC §3) -------------------------------------------------------------------------
    Range("services[].targets[].weight", 1, 65535, "count", "a relative weight, as Kong's 0-65535"),
    Range("services[].health.interval", 0.1, DAY, "seconds", "probing more than 10 times a second is a load test"),
    Range("services[].health.timeout", 0.001, DAY, "seconds", _T),
    Range("services[].health.healthy_threshold", 1, 1_000_000, "count", _COUNT),
    Range("services[].health.unhealthy_threshold", 1, 1_000_000, "count", _COUNT),
    Range("services[].health.max_backoff", 0.001, DAY, "seconds", _T),
    Range("services[].breaker.failure_threshold", 1, 1_000_000, "count", _COUNT),
    Range("services[].breaker.error_rate", 0, 1, "ratio", "a fraction of the requests in the window; 0 itself is refused (use failure_threshold = 1)"),
    Range("services[].breaker.min_requests", 1, 1_000_000, "count", _COUNT),
    Range("services[].breaker.window", 0.001, DAY, "seconds", _T),
    Range("services[].breaker.open_timeout", 0.001, DAY, "seconds", _T),
    Range("services[].breaker.half_open_requests", 1, 1_000_000, "count", _COUNT),
    Range("services[].breaker.success_threshold", 1, 1_000_000, "count", _COUNT),
    Range("services[].breaker.failure_statuses[]", 100, 599, "count", "an HTTP status code"),
    Range("routes[].timeout", 0.001, DAY, "seconds", _T),
    Range("routes[].retries", 0, 100, "count", "each retry is another attempt on another target"),
    Range("routes[].canary.weight", 0, 100, "count", "a percentage of users"),
    Range("routes[].fallback.status", 200, 599, "count", "an HTTP status code of a final response"),
    Range("routes[].json_max_bytes", 1, 16 * MIB, "bytes",
          "the body is held in memory until it is checked: one such buffer per connection"),
    Range("routes[].rate_limits[].limit", 1, 1_000_000_000, "count", _LIMIT),
    Range("routes[].rate_limits[].window", 0.001, MONTH, "seconds", "up to 31 days, for monthly limits"),
    Range("routes[].rate_limits[].burst", 0, 1_000_000_000, "count", _LIMIT),
    Range("quotas.<table>.limit", 1, 1_000_000_000, "count",
          "`<table>`: `default_user`, `default_org`, `orgs.<org>` or `users.<user>`"),
    Range("quotas.<table>.window", 0.001, MONTH, "seconds", "up to 31 days, for monthly quotas"),
    Range("quotas.orgs.<org>.user_limit", 1, 1_000_000_000, "count", _LIMIT),
)

RANGES: dict[str, Range] = {r.key: r for r in _TABLE}


def markdown_table() -> str:
    """The README's "Numeric ranges" table (tests/config/test_ranges.py prints it when they differ)."""
    lines = ["| setting | range | unit | why |", "| --- | --- | --- | --- |"]
    for r in _TABLE:
        unit = {"count": "integer", "bytes": "bytes (integer)", "seconds": "seconds", "ratio": "fraction"}[r.kind]
        lines.append(f"| `{r.key}` | {r.span} | {unit} | {r.why} |")
    return "\n".join(lines) + "\n"
