"""Alert webhooks (SPEC §7) against a real HTTP receiver: signed bodies, retries while it is down or
failing, one delivery per event key per node however many workers saw it, bounded queues."""
from __future__ import annotations

import asyncio
import os
import socket

import pytest

from gateway.config.env import EnvError, load_settings
from gateway.observability import webhooks
from gateway.observability.webhooks import WebhookSender, signature
from gateway.state.client import StateClient
from gateway.state.control import ControlPlane
from gateway.state.events import EventHub
from tests.observability.receiver import Receiver
from tests.state.helpers import run_on_uvloop, until

SECRET = "s3cret-for-tests"


@pytest.fixture
def receiver():
    r = Receiver().start()
    yield r
    r.stop()


def test_events_are_posted_with_the_spec_fields_and_a_valid_signature(receiver) -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        sender = WebhookSender(loop, (receiver.url,), SECRET)
        hub = EventHub("node-1", sinks=[sender])
        hub.emit("circuit_opened", service="users", target="http://10.0.0.1:80", details={"failures": 5})
        hub.emit("redis_down", details={"reason": "refused"})
        await until(lambda: len(receiver.events()) == 2, timeout=10)
        await sender.close()

    run_on_uvloop(main)
    receiver.verify_all(SECRET)
    first = receiver.events()[0]
    assert set(first) == {"event", "severity", "service", "target", "details", "time", "gateway"}
    assert first["event"] == "circuit_opened" and first["gateway"] == "node-1"
    assert first["severity"] == "critical" and first["details"] == {"failures": 5}
    assert receiver.received[0]["headers"]["Content-Type"] == "application/json"
    assert signature(SECRET, b"x") != signature("other", b"x")


def test_a_receiver_that_is_down_or_failing_gets_the_event_once_it_is_back() -> None:
    # Down: the port is bound but not listening (refused), and no other process can take it
    # before the receiver comes up on it (a free_port() left unbound could be taken meanwhile).
    receiver = Receiver().reserve()
    port = receiver.port

    async def main() -> WebhookSender:
        loop = asyncio.get_running_loop()
        sender = WebhookSender(loop, (f"http://127.0.0.1:{port}/hook",), SECRET)
        hub = EventHub("n", sinks=[sender])
        hub.emit("target_down", service="s", target="http://t:1")
        assert not sender.counts                       # the sink never waits: queued, not attempted yet
        await asyncio.sleep(2.5)                       # down: attempts at 0, 1, 3 s...
        assert sender.counts[("target_down", "retried")] >= 2
        receiver.status = 500
        receiver.start()                               # up but failing: still retried
        await until(lambda: len(receiver.received) >= 1, timeout=10)
        receiver.status = 200
        # The receiver holds the event before the sender has read the 200 (made wide on purpose
        # here: a CI run closed the sender in that window, which cancels the delivery uncounted),
        # so wait for the sender to count it too.
        receiver.answer_delay = 0.3
        await until(lambda: len(receiver.events()) == 1, timeout=15)
        await until(lambda: sender.counts[("target_down", "sent")] == 1, timeout=5)
        await sender.close()
        return sender

    try:
        sender = run_on_uvloop(main)
    finally:
        receiver.stop()
    receiver.verify_all(SECRET)
    assert receiver.events()[0]["event"] == "target_down"
    assert sender.counts[("target_down", "sent")] == 1
    assert sender.counts[("target_down", "failed")] == 0


def test_same_event_from_two_workers_is_delivered_once_per_node(receiver) -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        sender = WebhookSender(loop, (receiver.url,), SECRET)
        cp = ControlPlane(loop, EventHub("node", sinks=[sender]))
        clients = []
        for i in range(2):
            child = cp.attach_worker(i)
            c = StateClient(loop)
            await c.start(os.dup(child.fileno()))
            child.close()
            clients.append(c)
        await until(lambda: all(c.synced for c in clients))
        for c in clients:          # both workers see the circuit open, several times
            for _ in range(5):
                c.emit("circuit_opened", service="users", target="http://a:1")
        clients[1].emit("circuit_closed", service="users", target="http://a:1")
        await until(lambda: len(receiver.events()) == 2, timeout=10)
        await asyncio.sleep(0.5)   # nothing more arrives
        await sender.close()
        for c in clients:
            c.close()
        await cp.close()

    run_on_uvloop(main)
    assert sorted(e["event"] for e in receiver.events()) == ["circuit_closed", "circuit_opened"]
    receiver.verify_all(SECRET)


def test_a_receiver_that_never_answers_costs_one_attempt_and_a_full_queue_drops(monkeypatch) -> None:
    monkeypatch.setattr(webhooks, "ATTEMPT_TIMEOUT", 0.3)
    monkeypatch.setattr(webhooks, "MAX_QUEUE", 3)
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(16)              # accepts (backlog), never reads, never answers

    async def main() -> WebhookSender:
        loop = asyncio.get_running_loop()
        sender = WebhookSender(loop, (f"http://127.0.0.1:{silent.getsockname()[1]}/",), None)
        hub = EventHub("n", sinks=[sender])
        for i in range(5):
            hub.emit("target_down", service="s", target=f"http://t:{i}")
        await asyncio.sleep(1.6)
        assert sender.counts[("target_down", "retried")] >= 1
        await sender.close()
        return sender

    try:
        sender = run_on_uvloop(main)
    finally:
        silent.close()
    assert sender.counts[("target_down", "dropped")] == 2
    names = [s[0] for s in sender.samples()]
    assert set(names) == {"gateway_alerts_sent_total"}


def test_bad_webhook_urls_exit_2_naming_the_variable() -> None:
    for bad in ("ftp://x/hook", "not a url", "http://:99999/"):
        with pytest.raises(EnvError) as exc:
            load_settings({"GATEWAY_ALERT_WEBHOOKS": bad})
        assert "GATEWAY_ALERT_WEBHOOKS" in str(exc.value)
    s = load_settings({"GATEWAY_ALERT_WEBHOOKS": "http://a/h, https://b/h", "GATEWAY_ALERT_SECRET": "k"})
    assert s.alert_webhooks == ("http://a/h", "https://b/h")


