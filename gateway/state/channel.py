"""Frames between the supervisor and one worker over a Unix socketpair.

Why a channel per worker rather than a change log in shared memory: a worker applies a change the
moment it arrives (the loop wakes on the socket, so a change reaches every worker in milliseconds
and nothing at all runs while nothing changes), order comes with the stream, and a worker that
starts late or fell behind gets one snapshot frame instead of needing a log long enough to replay.
The same socket carries the worker's acks (which change it has applied) and its events back.

A frame is a 4-byte big-endian length and an orjson body (a dict with a "t" type field). Both ends
bound what they accept (`max_frame`) and what they queue: `send()` refuses once the transport's
write buffer holds more than `max_buffer` bytes and tells the caller, who decides what to drop (the
supervisor then resends a snapshot when the worker catches up; a worker drops events). A peer that
sends a frame over the limit or garbage is cut off: the channel is closed and `on_close` runs.
"""
from __future__ import annotations

import asyncio
import logging
import socket
import struct
from collections.abc import Callable
from typing import Any

import orjson

log = logging.getLogger("gateway.state")

_LEN = struct.Struct(">I")

# The largest frame the supervisor sends: a snapshot of the whole state (control.MAX_STATE bytes of
# values) with its keys and framing.
MAX_STATE_FRAME = 96 << 20


class FrameProtocol(asyncio.Protocol):
    def __init__(self, on_frame: Callable[[dict[str, Any]], None], *, max_frame: int, max_buffer: int,
                 max_send: int | None = None, on_close: Callable[[Exception | None], None] | None = None,
                 on_drain: Callable[[], None] | None = None, name: str = "channel") -> None:
        self.on_frame = on_frame
        self.on_close = on_close
        self.on_drain = on_drain
        self.max_frame = max_frame                  # what the peer may send us
        self.max_send = max_frame if max_send is None else max_send
        self.max_buffer = max_buffer
        self.name = name
        self.transport: asyncio.Transport | None = None
        self._buf = bytearray()
        self._paused = False
        self.closed = False

    # --- asyncio.Protocol --------------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        # Low-water mark at a quarter: resume (and the snapshot that follows) once the peer has
        # really caught up, not after every few bytes.
        self.transport.set_write_buffer_limits(high=self.max_buffer, low=self.max_buffer // 4)  # type: ignore[union-attr]

    def data_received(self, data: bytes) -> None:
        self._buf += data
        buf = self._buf
        pos = 0
        try:
            while len(buf) - pos >= 4:
                (size,) = _LEN.unpack_from(buf, pos)
                if size > self.max_frame:
                    raise ValueError(f"frame of {size} bytes over the {self.max_frame}-byte limit")
                if len(buf) - pos - 4 < size:
                    break
                frame = orjson.loads(memoryview(buf)[pos + 4:pos + 4 + size])
                pos += 4 + size
                if not isinstance(frame, dict):
                    raise ValueError("frame is not a JSON object")
                self.on_frame(frame)
                if self.closed:
                    return
        except (ValueError, orjson.JSONDecodeError) as exc:
            log.error("%s: bad frame from the peer, closing: %s", self.name, exc)
            self.close()
            return
        del buf[:pos]

    def pause_writing(self) -> None:
        self._paused = True

    def resume_writing(self) -> None:
        self._paused = False
        if self.on_drain is not None:
            self.on_drain()

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        self._buf = bytearray()
        if not self.closed:
            self.closed = True
            if self.on_close is not None:
                self.on_close(exc)

    # --- sending ----------------------------------------------------------------------------------
    @property
    def congested(self) -> bool:
        """The peer is not keeping up: the write buffer is over its high-water mark."""
        return self._paused

    def send(self, frame: dict[str, Any], *, force: bool = False) -> bool:
        """Queue one frame; False (nothing queued) when closed or congested, unless `force`
        (a snapshot must go out even into a full buffer: it replaces what was dropped)."""
        t = self.transport
        if t is None or self.closed or (self._paused and not force):
            return False
        body = orjson.dumps(frame)
        if len(body) > self.max_send:
            raise ValueError(f"{self.name}: frame of {len(body)} bytes over the {self.max_send}-byte limit")
        t.write(_LEN.pack(len(body)) + body)
        return True

    def close(self) -> None:
        t = self.transport
        if t is not None:
            t.close()
        elif not self.closed:
            self.closed = True
            if self.on_close is not None:
                self.on_close(None)


async def open_channel(loop: asyncio.AbstractEventLoop, sock: socket.socket, protocol: FrameProtocol) -> FrameProtocol:
    """Serve an already connected socket (one end of a socketpair) with `protocol`."""
    sock.setblocking(False)
    await loop.connect_accepted_socket(lambda: protocol, sock=sock)
    return protocol


def socketpair() -> tuple[socket.socket, socket.socket]:
    """(parent end, child end); the child end is inheritable so Popen(pass_fds=...) can hand it on."""
    parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    child.set_inheritable(True)
    return parent, child
