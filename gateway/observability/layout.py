"""The request metrics' layout in node memory: which object holds which label child.

One object per (route, service) and one per (service, target), placed by name while the runtime
builds, so every worker and every reload counts into the same cells and the exporter (in the
supervisor, which has no runtime) finds them by name:

  metrics/requests/<route>/<service>   CounterArray[len(METHODS) * len(CODES)]  requests by (method, code)
                                       + Histogram(BUCKETS)                     request duration
  metrics/upstream/<service>/<target>  Histogram(BUCKETS)                       upstream duration
                                       + CounterArray[len(ERROR_KINDS)]         upstream errors by kind
                                       + [last answer, last failure]            CLOCK_MONOTONIC us

Names percent-encode their parts (route and service names, target URLs): a name splits back into
its label values without ambiguity. Requests no route matched count under route "" service "".

Label values are bounded by construction: `method` is one of METHODS (any other method counts as
"other"), `code` one of CODES. CODES holds the registered status codes (RFC 9110 and the IANA
registry) plus nginx's 499 (the client left before any byte of the response); a status outside it
counts in its class's overflow column ("2xx"... "5xx"), one outside 100..599 as "other". So a
request line cannot create series, and a route costs 8 x 720 + 144 bytes wherever the codes fall.
"""
from __future__ import annotations

from urllib.parse import quote, unquote

ACCESS_LOG_NAME = "metrics/access_log"     # CounterArray[2]: lines logged, lines dropped
TRACING_NAME = "metrics/tracing"           # CounterArray[2]: spans exported, spans dropped
ERROR_LOG_NAME = "metrics/error_log"       # CounterArray[2]: error-log lines logged, suppressed
# gateway_connections: one int64 cell per worker index for its open client connections, then one
# per worker index for its idle pooled upstream connections (each worker stores its own counts; a
# replacement starts by storing 0 in its slots).
CONNECTIONS_NAME = "metrics/connections"
CONNECTION_SLOTS = 64
# Failed Redis calls by op (gateway_redis_errors_total{op}), every process's RedisLinks adding in.
REDIS_ERRORS_NAME = "metrics/redis_errors"
REDIS_OPS: tuple[str, ...] = ("ratelimit", "load", "put", "delete", "heartbeat", "leave", "subscribe", "other")
REQUESTS_PREFIX = "metrics/requests/"
UPSTREAM_PREFIX = "metrics/upstream/"

# Prometheus `le` bounds, seconds: 100 us to 10 s (a 1-2.5-5 ladder, as Envoy and most exporters).
BUCKETS: tuple[float, ...] = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05,
                              0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

METHODS: tuple[str, ...] = ("GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "CONNECT",
                            "TRACE", "other")
OTHER_METHOD = len(METHODS) - 1

_REGISTERED = (
    [100, 101, 102, 103]
    + [200, 201, 202, 203, 204, 205, 206, 207, 208, 226]
    + [300, 301, 302, 303, 304, 305, 307, 308]
    + list(range(400, 419)) + [421, 422, 423, 424, 425, 426, 428, 429, 431, 451, 499]
    + [500, 501, 502, 503, 504, 505, 506, 507, 508, 510, 511]
)
CODES: tuple[str, ...] = tuple(str(c) for c in _REGISTERED) + ("1xx", "2xx", "3xx", "4xx", "5xx", "other")

ERROR_KINDS: tuple[str, ...] = ("connect", "timeout", "reset", "protocol")


def code_table() -> list[int]:
    """status (0..999) → column in CODES."""
    col = {c: i for i, c in enumerate(CODES)}
    out = []
    for status in range(1000):
        s = str(status)
        if s in col:
            out.append(col[s])
        elif 100 <= status < 600:
            out.append(col[f"{status // 100}xx"])
        else:
            out.append(col["other"])
    return out


def _hist_nbytes() -> int:
    return 8 * (len(BUCKETS) + 2)


REQUESTS_COUNTS = len(METHODS) * len(CODES)
REQUESTS_SIZE = 8 * REQUESTS_COUNTS + _hist_nbytes()     # counts first, then the histogram
UPSTREAM_SIZE = _hist_nbytes() + 8 * len(ERROR_KINDS) + 16    # histogram, errors, marks


def requests_name(route: str, service: str) -> str:
    return REQUESTS_PREFIX + quote(route, safe="") + "/" + quote(service, safe="")


def upstream_name(service: str, target: str) -> str:
    return UPSTREAM_PREFIX + quote(service, safe="") + "/" + quote(target, safe="")


def split_name(name: str, prefix: str) -> tuple[str, str] | None:
    """The two label values a name encodes, or None if it is not one of ours."""
    if not name.startswith(prefix):
        return None
    parts = name[len(prefix):].split("/")
    if len(parts) != 2:
        return None
    return unquote(parts[0]), unquote(parts[1])
