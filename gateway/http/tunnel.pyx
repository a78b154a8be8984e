"""Tunnel: the bytes of a connection that switched protocols (SPEC §4: WebSocket and other
Upgrades, on routes with `websocket = true`).

After the upstream's 101 the two connections are joined: what one side sends is written to the
other as it comes, with no parsing and no buffering of our own. Flow control is coupled both ways,
as for request and response bodies: a side whose write buffer is over its high-water mark stops
the reading of the other side, so a peer that never reads holds at most one transport buffer of
the other's bytes in our memory (and then nothing moves, so the idle timeout ends it).

Half-close: a FIN from one side is passed on (write_eof) and the other direction keeps flowing;
when both sides have sent theirs, or either connection is lost, both are closed. close() still
flushes what a transport holds, but only for one more idle period: a peer that never reads would
otherwise keep its socket (and our buffer) for ever, so after that the transports are aborted.

Idle timeout: nginx's proxy_read_timeout for upgraded connections, i.e. the route's `timeout` or
GATEWAY_UPSTREAM_TIMEOUT, counted from the last byte in either direction (checked by the loop's
Ticker like every other deadline). Applications that keep a WebSocket open without traffic send
pings more often than that, or the route sets a longer `timeout`.

The upstream connection never returns to the pool; drain leaves a tunnel alone until
GATEWAY_DRAIN_TIMEOUT, when the worker closes every connection left.
"""
import logging

from .flow import PAUSE_UPSTREAM

from gateway.http.flow cimport ReadGate, Ticker
from gateway.pipeline.context cimport RequestContext

log = logging.getLogger("gateway.http")
cdef int cPAUSE_UPSTREAM = PAUSE_UPSTREAM


cdef class Tunnel:
    """Joins a client transport and an upstream transport after a 101 (see module docstring)."""

    def __init__(self, down_t, up_t, ReadGate gate, Ticker ticker, RequestContext ctx, double idle,
                 on_end) -> None:
        self.down_t = down_t
        self.up_t = up_t
        self.gate = gate
        self.ticker = ticker
        self.ctx = ctx
        self.idle = idle
        self.deadline = ticker.now + idle
        self.down_eof = False
        self.up_eof = False
        self.closed = False
        self.gone = 0
        self.on_end = on_end

    cdef int start(self, bytes from_down, bytes from_up) except -1:
        """Begin with the bytes each side sent after its head (the client's, held while the
        upgrade was pending; the upstream's, read with the 101)."""
        self.ticker.add(self)
        if from_up:
            self.from_up(from_up)
        if from_down:
            self.from_down(from_down)
        return 0

    cdef int from_down(self, bytes data) except -1:
        if not self.closed:
            self.ctx.bytes_in += len(data)
            self.deadline = self.ticker.now + self.idle
            self.up_t.write(data)
        return 0

    cdef int from_up(self, bytes data) except -1:
        if not self.closed:
            self.ctx.bytes_out += len(data)
            self.deadline = self.ticker.now + self.idle
            self.down_t.write(data)
        return 0

    # --- flow control: a side over its write high-water mark stops the other side's reading ---
    cdef int down_paused(self) except -1:
        if not self.closed and not self.up_eof and not self.up_t.is_closing():
            self.up_t.pause_reading()
        return 0

    cdef int down_resumed(self) except -1:
        if not self.closed and not self.up_eof and not self.up_t.is_closing():
            self.up_t.resume_reading()
        return 0

    cdef int up_paused(self) except -1:
        self.gate.pause(cPAUSE_UPSTREAM)
        return 0

    cdef int up_resumed(self) except -1:
        self.gate.resume(cPAUSE_UPSTREAM)
        return 0

    # --- half-close ---
    cdef bint eof_from_down(self) except -1:
        """The client sent FIN: pass it on; True keeps the client's transport open for writing."""
        self.down_eof = True
        self.gate.ended = True   # (never resume reading a stream after EOF)
        if self.closed:
            return False
        if self.up_eof or not self.up_t.can_write_eof():
            self.close()
            return False
        self.up_t.write_eof()
        return True

    cdef bint eof_from_up(self) except -1:
        self.up_eof = True
        if self.closed:
            return False
        if self.down_eof or not self.down_t.can_write_eof():
            self.close()
            return False
        self.down_t.write_eof()
        return True

    cdef int lost(self) except -1:
        """Either connection is gone: the other one is closed (after flushing what it holds)."""
        self.gone += 1
        self.close()
        if self.gone >= 2:
            self.ticker.discard(self)   # both sockets are gone: nothing left to watch
        return 0

    cdef int close(self) except -1:
        if self.closed:
            return 0
        self.closed = True
        self.deadline = self.ticker.now + self.idle   # the flush gets one idle period (on_tick)
        self.down_t.close()
        self.up_t.close()
        on_end = self.on_end
        self.on_end = None
        if on_end is not None:
            on_end()
        return 0

    def on_tick(self, double now) -> None:
        if now < self.deadline:
            return
        if not self.closed:
            log.info("request %s: tunnel idle for %.1fs, closed", self.ctx.request_id, self.idle)
            self.close()
        else:
            # Closed an idle period ago and a side still holds unsent bytes: its peer is not reading.
            self.ticker.discard(self)
            self.down_t.abort()
            self.up_t.abort()

    # (for tests)
    def shut(self) -> None:
        self.close()
