"""Alert webhooks (SPEC §7): an EventHub sink in the control plane's process that POSTs each
delivered event to every GATEWAY_ALERT_WEBHOOKS URL.

- Body: the event as the hub delivers it, {"event", "severity", "service", "target", "details",
  "time", "gateway"}, JSON; `X-Gateway-Signature: sha256=<hex HMAC-SHA256 of the raw body>` keyed
  with GATEWAY_ALERT_SECRET (no signature when the secret is unset: a warning at start says so).
- Deduplication is the hub's (one delivery per event key per 60 s per node, whatever the number
  of workers that saw it); this module only delivers.
- Per URL one sender task takes deliveries in order. A failed attempt (connection refused, timeout,
  a status other than 2xx) is retried with exponential backoff from 1 s capped at 10 s, until
  RETRY_FOR (5 minutes) has passed since the event was queued; then it is given up and counted
  `failed`. Each attempt has a time budget (ATTEMPT_TIMEOUT) for the whole exchange, so a receiver
  that accepts and never answers, or trickles one byte at a time, costs one attempt, not the sender.
- The queue per URL is bounded (MAX_QUEUE): an event arriving when it is full is dropped and
  counted `dropped`. The sink itself only appends to a deque: emitting never blocks the loop.
- gateway_alerts_sent_total{event,result}: result sent | retried | failed | dropped, kept in this
  process (the one process that delivers for the node, which also serves /metrics).
"""
from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import ssl
import time
from collections import Counter, deque
from typing import Any
from urllib.parse import urlsplit

import orjson

log = logging.getLogger("gateway.alerts")

MAX_QUEUE = 1000
RETRY_FOR = 300.0
BACKOFF_START = 1.0
BACKOFF_CAP = 10.0
ATTEMPT_TIMEOUT = 5.0
MAX_RESPONSE_HEAD = 16 * 1024


def signature(secret: str, body: bytes) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


class _Target:
    """One webhook URL: its queue and its sender task."""

    def __init__(self, url: str) -> None:
        parts = urlsplit(url)
        self.url = url
        self.tls = parts.scheme == "https"
        self.host = parts.hostname or ""
        self.port = parts.port or (443 if self.tls else 80)
        self.path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        self.host_header = parts.netloc.rsplit("@", 1)[-1]
        self.queue: deque[tuple[dict[str, Any], float]] = deque()
        self.wake = asyncio.Event()
        self.task: asyncio.Task[None] | None = None


class WebhookSender:
    def __init__(self, loop: asyncio.AbstractEventLoop, urls: tuple[str, ...], secret: str | None,
                 *, clock: Any = time.monotonic) -> None:
        self.loop = loop
        self.secret = secret
        self.clock = clock
        self.targets = [_Target(u) for u in urls]
        self.counts: Counter[tuple[str, str]] = Counter()
        self._ssl: ssl.SSLContext | None = None
        self.closed = False
        if urls and not secret:
            log.warning("GATEWAY_ALERT_WEBHOOKS is set without GATEWAY_ALERT_SECRET: alerts are sent unsigned")

    # --- the EventHub sink ----------------------------------------------------------------------------
    def __call__(self, ev: dict[str, Any]) -> None:
        if self.closed:
            return
        now = self.clock()
        for t in self.targets:
            if len(t.queue) >= MAX_QUEUE:
                self.counts[(ev["event"], "dropped")] += 1
                continue
            t.queue.append((ev, now))
            if t.task is None:
                t.task = self.loop.create_task(self._run(t))
            t.wake.set()

    # --- delivery ------------------------------------------------------------------------------------
    async def _run(self, t: _Target) -> None:
        while not self.closed:
            if not t.queue:
                t.wake.clear()
                await t.wake.wait()
                continue
            ev, queued = t.queue[0]
            body = orjson.dumps(ev)
            delay = BACKOFF_START
            while True:
                ok, why = await self._attempt(t, body)
                if ok:
                    self.counts[(ev["event"], "sent")] += 1
                    break
                if self.clock() - queued >= RETRY_FOR or self.closed:
                    self.counts[(ev["event"], "failed")] += 1
                    log.warning("alert %s to %s given up after %.0f s: %s", ev["event"], t.url,
                                self.clock() - queued, why)
                    break
                self.counts[(ev["event"], "retried")] += 1
                log.info("alert %s to %s failed (%s); retrying in %.0f s", ev["event"], t.url, why, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, BACKOFF_CAP)
            t.queue.popleft()

    async def _attempt(self, t: _Target, body: bytes) -> tuple[bool, str]:
        try:
            status = await asyncio.wait_for(self._post(t, body), ATTEMPT_TIMEOUT)
        except TimeoutError:
            return False, f"no answer within {ATTEMPT_TIMEOUT:.0f} s"
        except (OSError, ValueError, asyncio.IncompleteReadError, asyncio.LimitOverrunError) as exc:
            return False, f"{type(exc).__name__}: {exc}"
        if 200 <= status < 300:
            return True, ""
        return False, f"status {status}"

    async def _post(self, t: _Target, body: bytes) -> int:
        ctx = None
        if t.tls:
            if self._ssl is None:
                self._ssl = ssl.create_default_context()
            ctx = self._ssl
        reader, writer = await asyncio.open_connection(t.host, t.port, ssl=ctx, limit=MAX_RESPONSE_HEAD)
        try:
            head = [f"POST {t.path} HTTP/1.1", f"Host: {t.host_header}", "User-Agent: gateway-alerts",
                    "Content-Type: application/json", f"Content-Length: {len(body)}", "Connection: close"]
            if self.secret:
                head.append(f"X-Gateway-Signature: {signature(self.secret, body)}")
            writer.write(("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + body)
            await writer.drain()
            line = await reader.readuntil(b"\r\n")
            parts = line.split(None, 2)
            if len(parts) < 2 or not parts[0].startswith(b"HTTP/1.") or not parts[1].isdigit():
                raise ValueError(f"not an HTTP response: {line[:40]!r}")
            return int(parts[1])
        finally:
            writer.close()

    async def close(self) -> None:
        self.closed = True
        for t in self.targets:
            if t.task is not None:
                t.task.cancel()
        for t in self.targets:
            if t.task is not None:
                try:
                    await t.task
                except (asyncio.CancelledError, Exception):  # noqa: BLE001
                    pass

    # --- metrics ---------------------------------------------------------------------------------------
    def samples(self) -> list[tuple[str, str, str, dict[str, str], float]]:
        return [("gateway_alerts_sent_total", "counter",
                 "Alert webhook deliveries by event and result (sent, retried, failed, dropped)",
                 {"event": event, "result": result}, float(n))
                for (event, result), n in sorted(self.counts.items())]


def attach(hub: Any, loop: asyncio.AbstractEventLoop, settings: Any) -> WebhookSender | None:
    """Add the webhook sink to the node's EventHub when GATEWAY_ALERT_WEBHOOKS is set."""
    if not settings.alert_webhooks:
        return None
    sender = WebhookSender(loop, tuple(settings.alert_webhooks), settings.alert_secret)
    hub.sinks.append(sender)
    hub.webhooks = sender
    return sender


def metric_samples(ctx: Any) -> list[tuple[str, str, str, dict[str, str], float]]:
    """METRIC_SOURCES entry: the deliveries of this process's sender (the node's only one)."""
    control = ctx.state.control if ctx.state is not None else None
    sender = getattr(control.hub, "webhooks", None) if control is not None else None
    return sender.samples() if sender is not None else []
