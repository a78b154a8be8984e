"""The audit log never stalls its caller (a destination that never reads: records are dropped and
counted), writes JSON lines with the SPEC §7 fields; gateway_auth_failures_total reads the node
memory counters that the workers' filters increment."""
from __future__ import annotations

import json
import os
import time
from pathlib import Path

from gateway.admin.features import METRIC_SOURCES, AdminContext
from gateway.config.env import load_settings
from gateway.security.audit import AuditLog
from gateway.security.context import SecurityContext, failure_index
from gateway.state.memory import NodeMemory
from gateway.state.node import NodeState
from gateway.state.view import StateView


def test_audit_lines_have_the_spec_fields(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    log = AuditLog(str(path))
    log.record("auth_failure", {"request_id": b"rid-1", "client_ip": "10.0.0.1", "consumer": None,
                                "route": "api", "reason": "expired", "credential": "abcd1234"})
    log.flush()
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and not path.exists():
        time.sleep(0.01)
    while time.monotonic() < deadline and not path.read_text():
        time.sleep(0.01)
    rec = json.loads(path.read_text().splitlines()[0])
    assert set(rec) == {"time", "event", "request_id", "client_ip", "consumer", "route", "details"}
    assert rec["request_id"] == "rid-1" and rec["details"] == {"reason": "expired", "credential": "abcd1234"}


def test_a_destination_that_never_reads_never_stalls_the_caller(tmp_path: Path) -> None:
    fifo = tmp_path / "never-read"
    os.mkfifo(fifo)                    # opening it for writing blocks until a reader comes: none does
    log = AuditLog(str(fifo), max_queued=100)
    t0 = time.perf_counter()
    for i in range(10_000):
        log.record("auth_failure", {"request_id": str(i), "reason": "missing"})
    elapsed = time.perf_counter() - t0
    assert elapsed < 5.0               # ~ microseconds each; a blocking write would never return
    assert log.dropped >= 10_000 - 101
    # Unblock the writer thread so the test leaves nothing stuck behind.
    fd = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
    os.close(fd)


def test_off_writes_nothing() -> None:
    log = AuditLog("off")
    log.record("auth_failure", {"reason": "missing"})
    assert log.dropped == 0 and log._thread is None


def test_failure_metric_reads_node_memory() -> None:
    memory = NodeMemory.private(1 << 20)
    state = NodeState(StateView(), memory=memory)
    settings = load_settings({"GATEWAY_JWT_SECRET": "k" * 32, "GATEWAY_AUDIT_LOG": "off"})
    sec = SecurityContext(settings, state)
    sec.place(state.placer())
    for _ in range(3):
        sec.failed("jwt", "expired", time.monotonic())
    sec.failed("api_key", "unknown_key", time.monotonic())
    # The supervisor's view: no runtime, the counters found in node memory by name.
    from gateway.config.model import GatewayConfig

    ctx = AdminContext(settings, GatewayConfig, state)
    samples = [s for source in METRIC_SOURCES for s in source(ctx) if s[0] == "gateway_auth_failures_total"]
    by_label = {(s[3]["method"], s[3]["reason"]): s[4] for s in samples}
    assert by_label[("jwt", "expired")] == 3 and by_label[("api_key", "unknown_key")] == 1
    assert len(samples) == 18 and all(s[1] == "counter" for s in samples)
    assert sec.failures[failure_index("jwt", "expired")] == 3


def test_auth_failure_surge_is_emitted_once_per_window() -> None:
    from gateway.security.context import SURGE_THRESHOLD, SURGE_WINDOW

    emitted: list[tuple[str, dict]] = []

    class FakeState:
        view = StateView()
        status = {"redis": "off"}

        def emit(self, event: str, **kw: object) -> bool:
            emitted.append((event, dict(kw)))
            return True

    sec = SecurityContext(load_settings({"GATEWAY_JWT_SECRET": "k" * 32, "GATEWAY_AUDIT_LOG": "off"}),
                          FakeState())  # type: ignore[arg-type]
    now = 1000.0
    for _ in range(SURGE_THRESHOLD * 3):
        sec.failed("jwt", "bad_signature", now)
    assert [e for e, _ in emitted] == ["auth_failure_surge"]
    for _ in range(SURGE_THRESHOLD):
        sec.failed("jwt", "bad_signature", now + SURGE_WINDOW + 1)
    assert len(emitted) == 2
