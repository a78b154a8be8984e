"""The breaker pieces in one process: admission and outcomes through the data plane's seams, the
prepared fallbacks on the wire, one circuit per node shared by a worker's runtime and the control
process (node memory), the metric values, events, and a reload that keeps or renews a circuit."""
from __future__ import annotations

import sys
from typing import Any

import pytest

from gateway._fast.breaker import CircuitBreaker
from gateway.admin.features import METRIC_SOURCES, AdminContext
from gateway.config import load_settings
from gateway.config.schema import loads_config
from gateway.discovery.breaker_control import NodeBreakers
from gateway.discovery.breakers import Admission, BreakerObserver, breaker_name, failure_table
from gateway.discovery.fallback import Unavailable
from gateway.discovery.service import Service, Target
from gateway.http import replies
from gateway.pipeline.context import RequestContext
from gateway.routing import Route
from gateway.runtime import build_runtime
from gateway.state.events import EventHub
from gateway.state.memory import NodeMemory
from gateway.state.node import NodeState
from gateway.state.view import StateView
from tests.http.harness import Harness, status_of

CONFIG = '''
[[services]]
name = "users"
targets = ["http://127.0.0.1:9001", "http://127.0.0.1:9002"]
[services.breaker]
failure_threshold = 2
open_timeout = 5.0
half_open_requests = 1
success_threshold = 1
failure_statuses = [502, 503]

[[services]]
name = "plain"
targets = ["http://127.0.0.1:9003"]

[[routes]]
name = "users"
path = "/users"
service = "users"
fallback = { status = 503, body = "down for now", content_type = "text/plain" }

[[routes]]
name = "plain"
path = "/plain"
service = "plain"
'''


def ctx_for(ticket: int = 0, status: int = 200) -> RequestContext:
    ctx = RequestContext()
    ctx.breaker_ticket = ticket
    ctx.status = status
    ctx.upstream_start, ctx.upstream_end = 1.0, 1.25
    return ctx


def observer(**kw: Any) -> tuple[CircuitBreaker, Target, BreakerObserver]:
    cfg = loads_config(CONFIG).services[0].breaker
    assert cfg is not None
    b = CircuitBreaker(failure_threshold=2, open_timeout=5.0, half_open_requests=1, success_threshold=1, **kw)
    t = Target("127.0.0.1", 9001)
    return b, t, BreakerObserver({t: b}, failure_table(cfg))


def test_admission_notes_the_ticket_or_the_refusal() -> None:
    b, t, _ = observer()
    ctx = RequestContext()
    admit = Admission(b)
    assert admit(ctx) is True and ctx.breaker_ticket > 0
    b.force_open(1.0)
    assert admit(ctx) is False and ctx.breaker_ticket == -1
    assert admit(None) is False       # pick(None) (no request) still works


@pytest.mark.parametrize(("kind", "status", "failed"), [
    (None, 200, False), (None, 404, False), (None, 500, False),   # 500 is not in failure_statuses
    (None, 502, True), (None, 503, True),
    ("connect", 0, True), ("timeout", 0, True), ("reset", 0, True), ("protocol", 0, True),
])
def test_outcomes_count_as_configured(kind: str | None, status: int, failed: bool) -> None:
    b, t, observe = observer()
    for _ in range(2):
        observe(ctx_for(b.allow(1.0), status), t, kind)
    assert b.snapshot()["state"] == ("open" if failed else "closed")


def test_a_result_is_recorded_once_and_only_with_a_ticket() -> None:
    b, t, observe = observer()
    ctx = ctx_for(b.allow(1.0), 502)
    observe(ctx, t, None)
    observe(ctx, t, None)                  # the same admission again: ignored
    assert b.snapshot()["consecutive_failures"] == 1
    observe(ctx_for(0, 502), t, None)      # never admitted by this breaker
    observe(ctx_for(-1, 502), t, None)     # refused
    observe(ctx_for(b.allow(1.0), 502), Target("127.0.0.1", 1), None)   # another target
    assert b.snapshot()["consecutive_failures"] == 1


def test_an_aborted_probe_hands_its_slot_back_and_a_stale_result_moves_nothing() -> None:
    import time

    b, t, observe = observer()
    now = time.monotonic()          # the observer reads the same clock
    old = b.allow(now)
    b.record(now, False, 0.0, b.allow(now))
    b.record(now, False, 0.0, b.allow(now))
    assert b.state == 2
    # A slow call from before the trip reports now: stale, the circuit does not move.
    observe(ctx_for(old, 200), t, None)
    assert b.state == 2 and b.snapshot()["stale"] == 1
    later = time.monotonic() + 5.0          # past open_timeout: half-open, one probe
    probe = b.allow(later)
    assert probe and b.state == 1 and b.allow(later) == 0
    observe(ctx_for(probe), t, "aborted")   # the client left: no verdict, the slot is free again
    again = b.allow(later)
    assert again == probe and b.allow(later) == 0
    observe(ctx_for(again, 200), t, None)
    assert b.state == 0


def test_prepared_fallbacks_on_the_wire() -> None:
    config = loads_config(CONFIG)
    u = Unavailable(config.routes[0].fallback)
    refused, none_left = ctx_for(-1), ctx_for(0)
    assert u(refused) is u.circuit_open and u(none_left) is u.no_target
    wire = replies.render(u(refused), b"rid-1", True)
    assert wire.startswith(b"HTTP/1.1 503 ")
    assert b"Content-Type: text/plain\r\n" in wire and b"X-Gateway-Fallback: circuit-open\r\n" in wire
    assert wire.endswith(b"\r\n\r\ndown for now") and b"X-Request-Id: rid-1\r\n" in wire
    plain = Unavailable(None)
    wire = replies.render(plain(refused), b"rid-2", True)
    assert b"X-Gateway-Fallback: circuit-open\r\n" in wire
    assert wire.endswith(b'{"error":"circuit_open","message":"The upstream service is unavailable (circuit open).",'
                         b'"request_id":"rid-2"}')
    wire = replies.render(plain(none_left), b"rid-3", True)
    assert b"X-Gateway-Fallback: no-healthy-target\r\n" in wire and b'"error":"no_healthy_target"' in wire


def test_the_data_plane_answers_an_open_circuit_with_the_route_reply_and_no_upstream() -> None:
    h = Harness()
    b = CircuitBreaker(failure_threshold=1)
    h.target.admit = Admission(b)
    for route in h.router.routes:
        route.unavailable = Unavailable(None)
    b.force_open(1.0)
    h.feed(b"GET /api/x HTTP/1.1\r\nHost: a\r\n\r\n")
    out = h.down.take()
    assert status_of(out) == 503 and b"X-Gateway-Fallback: circuit-open\r\n" in out
    assert h.pool.conns == []
    h.close()


def node(memory: NodeMemory, config_text: str = CONFIG) -> tuple[Any, NodeState, NodeBreakers, list[dict[str, Any]]]:
    """A runtime as a worker builds it and the control process's view of the same node memory."""
    config = loads_config(config_text)
    events: list[dict[str, Any]] = []
    hub = EventHub("test", sinks=[events.append], cooldown=0.0)

    class Control:      # the bits of ControlPlane NodeBreakers reads
        store = None
        def __init__(self) -> None:
            self.hub = hub

    state = NodeState(StateView(), memory=memory, holder=0, control=Control(), instance="test")  # type: ignore[arg-type]
    runtime = build_runtime(config, load_settings({}), None, pool_factory=lambda *a: object(), state=state)
    holder = {"config": config}
    nb = NodeBreakers(state, lambda: holder["config"])
    return runtime, state, nb, events


def test_worker_and_control_process_share_one_circuit_and_the_metrics_read_it() -> None:
    memory = NodeMemory.private(4 << 20)
    runtime, state, nb, events = node(memory)
    users = runtime.services["users"]
    # (every service is observed for passive health; only a breaker's service has an observer)
    assert users.observed and users.observers and runtime.services["plain"].observers == ()
    t1, t2 = users.targets
    # Two failures on t1 through the seams the data plane uses.
    for _ in range(2):
        ctx = RequestContext()
        assert users.pick(ctx) is not None
        ctx.upstream_target = users.targets[0]
        target = ctx.upstream_target
        ctx = RequestContext()
        assert target.admit(ctx)
        ctx.status, ctx.upstream_start, ctx.upstream_end = 502, 1.0, 1.1
        users.record(ctx, target, None)
    nb.poll()
    e1 = nb.entries[f"users/{t1.id}"]
    assert e1.breaker.state == 2                      # the control process sees the worker's circuit
    assert [ev["event"] for ev in events] == ["circuit_opened"]
    assert events[0]["service"] == "users" and events[0]["target"] == "http://127.0.0.1:9001"
    ctx = RequestContext()
    assert users.pick(ctx) is t2 and ctx.breaker_ticket > 0      # the balancer skips the open one
    ctx = RequestContext()
    e2 = nb.entries[f"users/{t2.id}"]
    e2.breaker.force_open(1.0)
    assert users.pick(ctx) is None and ctx.breaker_ticket == -1
    route = runtime.router.routes[0]
    reply = route.unavailable(ctx)
    assert reply.status == 503 and reply.body == b"down for now"

    ctx_admin = AdminContext(load_settings({}), lambda: runtime.config, state)
    got = {(name, tuple(sorted(labels.items()))): value
           for source in METRIC_SOURCES for name, _, _, labels, value in source(ctx_admin)}
    s1 = (("service", "users"), ("target", "http://127.0.0.1:9001"))
    s2 = (("service", "users"), ("target", "http://127.0.0.1:9002"))
    assert got[("gateway_circuit_state", s1)] == 2.0 and got[("gateway_circuit_state", s2)] == 2.0
    assert got[("gateway_circuit_transitions_total", (*s1[:1], ("target", s1[1][1]), ("to", "open")))] == 1.0
    assert got[("gateway_circuit_transitions_total", (*s1[:1], ("target", s1[1][1]), ("to", "closed")))] == 0.0
    assert not any(dict(labels).get("service") == "plain"                # only services with a breaker
                   for (name, labels) in got if name.startswith("gateway_circuit_"))
    # Half-open then closed, seen by the counters and the gauge.
    b1 = e1.breaker
    import time

    later = time.monotonic() + 5.0      # past open_timeout (the admission reads this clock)
    probe = b1.allow(later)
    assert probe
    assert got_state(ctx_admin, "http://127.0.0.1:9001") == 1.0
    b1.record(later, True, 0.1, probe)
    assert got_state(ctx_admin, "http://127.0.0.1:9001") == 0.0
    nb.poll()
    assert sorted((ev["event"], ev["target"][-4:]) for ev in events) == [
        ("circuit_closed", "9001"), ("circuit_opened", "9001"), ("circuit_opened", "9002")]


def got_state(ctx: AdminContext, url: str) -> float:
    for source in METRIC_SOURCES:
        for name, kind, _, labels, value in source(ctx):
            if name == "gateway_circuit_state" and labels["target"] == url:
                assert kind == "gauge"
                return value
    raise AssertionError(url)


def test_a_reload_keeps_a_circuit_unless_its_policy_changed() -> None:
    memory = NodeMemory.private(4 << 20)
    runtime, state, nb, _ = node(memory)
    target = runtime.services["users"].targets[0]
    target.admit.breaker.force_open(1.0)
    same = build_runtime(runtime.config, load_settings({}), None, pool_factory=lambda *a: object(), state=state)
    assert same.services["users"].targets[0].admit.breaker.state == 2
    changed = loads_config(CONFIG.replace("open_timeout = 5.0", "open_timeout = 6.0"))
    renewed = build_runtime(changed, load_settings({}), None, pool_factory=lambda *a: object(), state=state)
    assert renewed.services["users"].targets[0].admit.breaker.state == 0
    bc_old, bc_new = runtime.config.services[0].breaker, changed.services[0].breaker
    assert breaker_name("users", target.id, bc_old) != breaker_name("users", target.id, bc_new)


def test_forced_states_from_the_view_apply_to_the_node_circuit() -> None:
    memory = NodeMemory.private(4 << 20)
    runtime, state, nb, events = node(memory)
    t = runtime.services["users"].targets[0]
    state.view.apply(1, f"breakers/forced/users/{t.id}", {"state": "open"})
    assert t.admit.breaker.state == 2 and t.admit(RequestContext()) is False
    assert events[-1]["event"] == "circuit_opened" and events[-1]["details"]["cause"] == "forced"
    state.view.apply(2, f"breakers/forced/users/{t.id}", {"state": "closed"})
    assert t.admit.breaker.state == 0
    # Another instance's opening: for what is left of its period; our own is ignored.
    import time
    state.view.apply(3, f"breakers/open/users/{t.id}", {"until": time.time() + 30, "instance": "test"})
    assert t.admit.breaker.state == 0
    state.view.apply(4, f"breakers/open/users/{t.id}", {"until": time.time() - 1, "instance": "other"})
    assert t.admit.breaker.state == 0
    state.view.apply(5, f"breakers/open/users/{t.id}", {"until": time.time() + 30, "instance": "other"})
    assert t.admit.breaker.state == 2
    assert 29 < nb.describe(nb.entries[f"users/{t.id}"])["next_probe"] - time.time() <= 30.5
    assert events[-1]["details"] == {**events[-1]["details"], "cause": "remote", "instance": "other"}


def test_a_route_built_without_a_runtime_keeps_the_plain_503() -> None:
    svc = Service("s", [])
    route = Route("r", svc, "/")
    ctx = RequestContext()
    ctx.route = route
    assert replies.unavailable(ctx) is replies.NO_TARGET


def _breaker_harness(python_path: bool) -> tuple[Harness, CircuitBreaker]:
    """A one-target service with a breaker, as breakers.install wires it. python_path: the
    service is a subclass overriding pick() and record() in Python (as the balancers do), so the
    data plane's C calls of ServiceCore.pick/record go through cpdef's dispatch to Python, and the
    hooks are called through their __call__."""
    h = Harness()
    b = CircuitBreaker(failure_threshold=3, error_rate=0.5, min_requests=4, window=10.0, open_timeout=30.0,
                       half_open_requests=1, success_threshold=1)
    cfg = loads_config(CONFIG).services[0].breaker
    assert cfg is not None
    h.target.admit = Admission(b)
    h.service.observers = (BreakerObserver({h.target: b}, failure_table(cfg)),)
    h.service.observed = True
    h.service.passive = False
    if python_path:
        def pick(self: Any, ctx: Any = None) -> Any:
            t = self.targets[0]
            return t if t.available and t.admit(ctx) else None

        def record(self: Any, ctx: Any, target: Any, kind: Any) -> None:
            for observe in self.observers:
                observe(ctx, target, kind)
            if kind is not None:
                self._record_failure(ctx, target, kind)

        h.service.__class__ = type("InPython", (Service,), {"__slots__": (), "pick": pick, "record": record})
    for route in h.router.routes:
        route.unavailable = Unavailable(None)
    return h, b


@pytest.mark.parametrize("python_path", [False, True])
def test_the_compiled_pick_and_record_count_as_python_ones_do(python_path: bool) -> None:
    """Successes and failure statuses through the data plane reach the breaker once each, and the
    circuit opens on the same request with the compiled ServiceCore.pick/record as with Python
    overrides calling the hooks; the compiled path runs no Python frame for them."""
    h, b = _breaker_harness(python_path)
    answers = [b"200 OK", b"200 OK", b"503 Busy", b"502 Bad", b"503 Busy", b"200 OK"]
    statuses = []
    python_calls: list[str] = []

    def profile(frame: Any, event: str, arg: Any) -> None:
        if event == "call":
            python_calls.append(frame.f_code.co_name)

    for line in answers:
        sent = len(h.all_upstream_bytes())
        sys.setprofile(profile)
        try:
            h.feed(b"GET /x HTTP/1.1\r\nHost: a\r\n\r\n")
            if len(h.all_upstream_bytes()) > sent:          # forwarded: the upstream answers
                h.respond(b"HTTP/1.1 " + line + b"\r\nContent-Length: 0\r\n\r\n")
        finally:
            sys.setprofile(None)
        out = h.down.take()
        statuses.append((status_of(out), b"X-Gateway-Fallback: circuit-open" in out))
    # Two failures in four requests (min_requests 4, rate 0.5 >= error_rate): open after the 4th;
    # the 5th and 6th are answered by the gateway, and reach no upstream.
    assert statuses == [(200, False), (200, False), (503, False), (502, False), (503, True), (503, True)]
    assert b.state == 2                                  # open
    picks_and_records = [c for c in python_calls if c in ("pick", "record")]
    if python_path:
        assert picks_and_records.count("pick") == 6 and picks_and_records.count("record") == 4
    else:
        assert picks_and_records == []
    h.close()
