"""StateClient: a worker's end of its state channel (see control.py for the supervisor's).

It applies the supervisor's snapshot and changes to the worker's StateView as they arrive, in the
loop's reader callback: the hot path never looks at the channel and pays nothing while nothing
changes. After each frame it acks the seq it has applied. It also carries the worker's events to
the supervisor's EventHub, deduplicated locally with the same cooldown first and dropped (counted)
when the channel is congested.

And the worker's liveness: `listening()` once its socket serves, then `beat()` on every tick of
its loop's ticker (0.5 s). The supervisor counts a worker as serving (GET /ready) only while its
last frame is under 3 s old, and kills one silent past GATEWAY_WORKER_WATCHDOG: a beat proves the
loop turns, which a live pid does not (a SIGSTOPped worker, or one stuck in a callback, keeps its
socket in the SO_REUSEPORT group and takes its share of new connections without accepting them).
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
from collections.abc import Callable
from typing import Any

import orjson

from .channel import _LEN, MAX_STATE_FRAME, FrameProtocol, open_channel
from .events import COOLDOWN, Deduplicator, event_key, make_event
from .view import StateView

log = logging.getLogger("gateway.state")

FD_ENV = "_GATEWAY_STATE_FD"       # the inherited channel fd, set by the supervisor for each worker
SEND_BUFFER = 256 << 10            # acks and events queued towards the supervisor


class StateClient:
    def __init__(self, loop: asyncio.AbstractEventLoop, view: StateView | None = None, *,
                 on_status: Callable[[dict[str, Any]], None] | None = None) -> None:
        self.loop = loop
        self.view = view if view is not None else StateView()
        self.status: dict[str, Any] = {"redis": "off", "instances": 1}
        self.on_status = on_status
        self.synced = False                # a snapshot has been applied
        self.events_dropped = 0
        self._dedup = Deduplicator(COOLDOWN)
        self._awaiting_snapshot = True
        self._closing = False
        self.proto = FrameProtocol(self._on_frame, max_frame=MAX_STATE_FRAME, max_buffer=SEND_BUFFER,
                                   max_send=64 << 10,
                                   on_close=self._on_close, on_drain=self._ack, name="state channel")

    async def start(self, fd: int) -> None:
        sock = socket.socket(fileno=fd)
        await open_channel(self.loop, sock, self.proto)

    def close(self) -> None:
        self._closing = True
        self.proto.close()

    # --- from the supervisor -------------------------------------------------------------------------
    def _on_frame(self, frame: dict[str, Any]) -> None:
        t = frame.get("t")
        seq = frame.get("seq")
        if t == "snapshot" and isinstance(seq, int) and isinstance(frame.get("state"), dict):
            self.view.replace(seq, frame["state"])
            self._awaiting_snapshot = False
            self.synced = True
            self._set_status(frame.get("status"))
        elif t == "set" and isinstance(seq, int) and isinstance(frame.get("k"), str):
            if self._awaiting_snapshot:
                return
            if seq != self.view.seq + 1:
                # Cannot happen on an ordered stream unless the supervisor dropped changes for us
                # and its snapshot is on the way; ask anyway rather than apply out of order.
                log.warning("state channel: change %d after %d; asking for the whole state", seq, self.view.seq)
                self._awaiting_snapshot = True
                self.proto.send({"t": "resync"}, force=True)
                return
            self.view.apply(seq, frame["k"], frame.get("v"))
        elif t == "status":
            self._set_status(frame.get("status"))
            return
        else:
            log.warning("state channel: unknown or malformed frame %r", t)
            return
        self._ack()

    def _ack(self) -> None:
        # Not forced: a supervisor that does not read must not grow this worker. A skipped ack is
        # not lost: the next one (or the one sent when the channel drains) carries the latest seq.
        self.proto.send({"t": "ack", "seq": self.view.seq})

    def _set_status(self, status: Any) -> None:
        if isinstance(status, dict):
            self.status = status
            if self.on_status is not None:
                self.on_status(status)

    def _on_close(self, exc: Exception | None) -> None:
        # The supervisor is gone or cut us off; PR_SET_PDEATHSIG stops this worker in the first
        # case. Either way the worker keeps serving with the state it has.
        if self._closing:
            return
        log.error("state channel closed%s: no further changes will arrive", f": {exc}" if exc else "")

    # --- to the supervisor ---------------------------------------------------------------------------
    def listening(self) -> None:
        """The worker's socket serves: from now on it counts for /ready (while it beats)."""
        self.proto.send({"t": "listening"}, force=True)

    def reload_failed(self, error: str) -> None:
        """This worker could not apply a config its supervisor found valid (its runtime could not be
        built: node memory full...): the node's last_reload must say so."""
        self.proto.send({"t": "reload_failed", "error": error[:2000]}, force=True)

    def beat(self, connections: int) -> None:
        """The loop turns (sent on its ticker). Not forced: a supervisor that does not read must not
        grow this worker, and a supervisor that does not read does not check beats either."""
        self.proto.send({"t": "beat", "conns": connections})

    def emit(self, event: str, *, service: str | None = None, target: str | None = None,
             details: dict[str, Any] | None = None) -> bool:
        """Send an event to the node's EventHub; False when deduplicated here or dropped."""
        ev = make_event(event, service=service, target=target, details=details)
        if not self._dedup.admit(event_key(ev), time.monotonic()):
            return False
        if not self.proto.send({"t": "event", "event": ev}):
            self.events_dropped += 1
            return False
        return True


class LastWords:
    """A worker's way to tell the supervisor why it could not start: one "fatal" frame, written
    synchronously on a duplicate of its channel fd taken first thing (the loop may never have run,
    or the channel's transport may already be closed). The supervisor reads it before it handles
    the worker's exit, and gives up with this reason when no worker could ever start.

    A frame from the transport still half-written when the worker failed would garble this one;
    the supervisor then cuts the channel and reports the exit status alone."""

    __slots__ = ("fd",)

    def __init__(self, environ: Any = os.environ) -> None:
        self.fd: int | None = None
        raw = environ.get(FD_ENV)
        if raw:
            with contextlib.suppress(OSError, ValueError):
                self.fd = os.dup(int(raw))

    def say(self, error: str) -> None:
        fd, self.fd = self.fd, None
        if fd is None:
            return
        try:
            body = orjson.dumps({"t": "fatal", "error": error[:2000]})
            # ~2 KiB at most: one write into an idle socket's buffer (it is non-blocking: shared with
            # the transport, whose mode must not change under it).
            os.write(fd, _LEN.pack(len(body)) + body)
        except OSError:
            pass
        finally:
            os.close(fd)

    def close(self) -> None:
        fd, self.fd = self.fd, None
        if fd is not None:
            os.close(fd)
