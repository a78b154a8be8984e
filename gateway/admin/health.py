"""/health and /ready: one shape whatever the worker count, and its JSON schemas for /openapi.json.

With GATEWAY_WORKERS=1 the only process serves traffic and answers the admin listener itself
(role "standalone", gateway/worker.py); with more, the supervisor answers for its workers (role
"supervisor", gateway/supervisor.py). Both build their bodies here, so a probe, a dashboard or a
script reads the same fields either way: a standalone process is a node of one worker, slot 0.

/health is liveness: 200 while the process answers, with who serves (pids, slots, restarts).
/ready is readiness: 200 when the node should get traffic, 503 otherwise, `reasons` saying why
not. Fields may be added (`additionalProperties` is allowed: a client ignores what it does not know).
"""
from __future__ import annotations

import os
import time
from typing import Any

SLOT_SCHEMA = {
    "type": "object",
    "required": ["worker", "pid", "listening", "silent", "fast_crashes"],
    "properties": {
        "worker": {"type": "integer", "description": "the slot's index (GATEWAY_WORKER_INDEX)"},
        "pid": {"type": ["integer", "null"], "description": "its current process; null while being replaced"},
        "listening": {"type": "boolean", "description": "its socket serves"},
        "silent": {"type": ["number", "null"], "description": "seconds since it was last heard from"},
        "fast_crashes": {"type": "integer", "description": "deaths in a row within 5 s of a start"},
    },
}

HEALTH_SCHEMA = {
    "type": "object",
    "required": ["status", "version", "role", "pid", "uptime", "workers", "slots", "restarts", "state"],
    "properties": {
        "status": {"const": "ok"},
        "version": {"type": "string"},
        "role": {"enum": ["standalone", "supervisor"],
                 "description": "standalone: GATEWAY_WORKERS=1, this process serves; supervisor: it runs the workers"},
        "pid": {"type": "integer", "description": "the process answering"},
        "uptime": {"type": "number", "description": "seconds since this process started"},
        "workers": {"type": "array", "items": {"type": "integer"}, "description": "pids serving traffic"},
        "slots": {"type": "array", "items": SLOT_SCHEMA},
        "restarts": {"type": "integer", "description": "workers replaced since the start"},
        "state": {"type": "object", "description": "shared state: seq, keys, redis (off/up/down), instances, "
                                                   "node memory"},
    },
}

READY_SCHEMA = {
    "type": "object",
    "required": ["status", "reasons", "draining", "workers", "expected", "missing", "stalled", "services",
                 "routes", "redis"],
    "properties": {
        "status": {"enum": ["ready", "not_ready"]},
        "reasons": {"type": "array", "items": {"type": "string"}, "description": "why not ready; [] when ready"},
        "draining": {"type": "boolean", "description": "stopping: finishing in-flight requests"},
        "workers": {"type": "integer", "description": "workers serving: listening and heard from in the last 3 s"},
        "expected": {"type": "integer", "description": "GATEWAY_WORKERS"},
        "missing": {"type": "integer", "description": "expected - workers (crashed, starting, not spawned)"},
        "stalled": {"type": "integer", "description": "listening but silent: taking connections without "
                                                      "accepting them until the watchdog replaces them"},
        "services": {"type": "integer", "description": "services of the configuration in force"},
        "routes": {"type": "integer", "description": "routes of the configuration in force"},
        "redis": {"enum": ["off", "up", "down"], "description": "off: embedded state (no GATEWAY_REDIS_URL)"},
        # Filled by the reload bookkeeping (issue 13.6) through readiness(last_reload=...): a refused
        # reload keeps the node ready (the previous config serves) but says so here.
        "last_reload": {"type": ["object", "null"], "required": ["ok", "time", "errors"],
                        "description": "the last SIGHUP reload: null before any; a refused one leaves the "
                                       "previous configuration serving (the node stays ready)",
                        "properties": {"ok": {"type": "boolean"}, "time": {"type": "string"},
                                       "errors": {"type": "array", "items": {"type": "string"}}}},
    },
}

SCHEMAS = {"Health": HEALTH_SCHEMA, "Ready": READY_SCHEMA}


def _ref(name: str) -> dict[str, Any]:
    return {"content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{name}"}}}}


HEALTH_RESPONSES = {"200": {"description": "The process serves", **_ref("Health")}}
READY_RESPONSES = {"200": {"description": "Ready: send traffic", **_ref("Ready")},
                   "503": {"description": "Not ready: `reasons` says why (starting, draining, no or stalled "
                                          "workers, Redis unreachable)", **_ref("Ready")}}


class Liveness:
    """The /health body of one process; `started` is when it started (monotonic)."""

    def __init__(self, role: str) -> None:
        self.role = role
        self.started = time.monotonic()

    def body(self, *, workers: list[int], slots: list[dict[str, Any]], restarts: int,
             state: dict[str, Any]) -> dict[str, Any]:
        from gateway import __version__

        return {"status": "ok", "version": __version__, "role": self.role, "pid": os.getpid(),
                "uptime": round(time.monotonic() - self.started, 3), "workers": workers, "slots": slots,
                "restarts": restarts, "state": state}


def readiness(*, draining: bool, serving: int, expected: int, stalled: int, config: Any,
              redis: str, **extra: Any) -> tuple[bool, dict[str, Any]]:
    """(ready?, the /ready body). Ready: not draining, a worker serves, none stalled, and a
    configured Redis reachable (SPEC §8). `extra` fields are added as they are (both kinds of
    process pass the same ones; each needs its property in READY_SCHEMA, which the tests hold
    the bodies to), for facts that inform without deciding readiness (a refused reload)."""
    reasons = []
    if draining:
        reasons.append("draining")
    if serving == 0 and not draining:
        reasons.append("no worker serves yet")
    if stalled:
        reasons.append(f"{stalled} worker{'s' if stalled > 1 else ''} stalled (listening but silent)")
    if redis == "down":
        reasons.append("redis unreachable")
    return not reasons, {
        "status": "not_ready" if reasons else "ready", "reasons": reasons, "draining": draining,
        "workers": serving, "expected": expected, "missing": max(expected - serving, 0), "stalled": stalled,
        "services": len(getattr(config, "services", ())), "routes": len(getattr(config, "routes", ())),
        "redis": redis, **extra,
    }
