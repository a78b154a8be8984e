"""Flow control and the coarse per-loop timer of the data plane.

ReadGate: a transport's reading is paused for *reasons* (a bit each), so that independent causes
(pipelining queue full, upstream socket backed up, body buffered while connecting, the client not
reading our responses) never resume each other's pause by accident. Reading resumes only when no
reason is left; `on_open` then lets the owner parse the bytes it held back (downstream.pyx keeps
the unparsed rest of a read while paused, instead of parsing it all).

Ticker: one repeating timer per event loop instead of a `call_later` per request. Connections
store absolute deadlines on themselves (plain floats: setting one costs an attribute store) and the
ticker calls `on_tick(now)` on every registered connection every `interval` seconds. Measured on
this machine (uvloop 0.23): a call_later + cancel costs 0.5 µs, and a request would need two or
three of them (header, body or upstream, keep-alive); one tick over 10,000 idle connections costs
0.46 ms every 0.5 s (0.1 % of a core) and nothing per request. Deadlines are therefore late by at
most one interval; `now` (refreshed each tick) lets the hot path compute deadlines without calling
loop.time().
"""
import asyncio
import weakref
from typing import Protocol

# ReadGate reasons
PAUSE_PIPELINE = 1      # too many parsed requests waiting for their turn
PAUSE_UPSTREAM = 2      # the upstream socket's write buffer is full (request body backpressure)
PAUSE_BUFFER = 4        # request body bytes buffered while no upstream connection is ready yet
PAUSE_CLOSING = 8       # a reply was sent with close: nothing more is read
PAUSE_WRITE = 16        # the client's transport is over its write high-water mark (it is not reading)
PAUSE_TURN = 32         # this turn's work bound was reached: the rest of the read waits for the next
PAUSE_UPGRADE = 64      # an Upgrade request is pending: what follows it is held until the answer


cdef class ReadGate:
    # (attributes: flow.pxd)

    def __init__(self, transport: asyncio.Transport) -> None:
        self.transport = transport
        self.reasons = 0
        self.on_open = None
        self.ended = False

    cpdef pause(self, int reason):
        if not self.reasons and not self.ended:
            try:
                self.transport.pause_reading()
            except (RuntimeError, AttributeError):  # transport already closing
                pass
        self.reasons |= reason

    cpdef resume(self, int reason):
        if self.reasons & reason:
            self.reasons &= ~reason
            if not self.reasons:
                if self.on_open is not None:
                    self.on_open()
                # (after EOF, reading a stream again is undefined in libuv)
                if not self.ended and not self.transport.is_closing():
                    self.transport.resume_reading()


class Ticking(Protocol):
    def on_tick(self, now: float) -> None: ...


cdef class Ticker:
    """A repeating timer shared by every connection of one loop (see module docstring)."""

    def __init__(self, loop: asyncio.AbstractEventLoop, interval: float = 0.5) -> None:
        self.loop = loop
        self.interval = interval
        self.now = loop.time()
        self.members = set()
        self._handle = None

    cpdef add(self, object member):
        self.members.add(member)
        if self._handle is None:
            self.now = self.loop.time()
            self._handle = self.loop.call_later(self.interval, self._tick)

    cpdef discard(self, object member):
        self.members.discard(member)

    def _tick(self) -> None:
        cdef double now = self.loop.time()
        self.now = now
        if not self.members:
            self._handle = None  # idle loop: no wakeups until a connection registers again
            return
        self._handle = self.loop.call_later(self.interval, self._tick)
        # Copy: a member may close (and unregister itself) or open a connection while we iterate.
        for member in tuple(self.members):
            try:
                member.on_tick(now)
            except Exception:  # noqa: BLE001 - one broken connection must not stop the others' timers
                import logging

                logging.getLogger("gateway.http").exception("timer callback failed")


# Weak keys: a closed loop (tests create many) takes its ticker with it.
_tickers = weakref.WeakKeyDictionary()
# Tests shrink this to exercise timeouts in milliseconds instead of seconds.
DEFAULT_INTERVAL = 0.5


def ticker_for(loop: asyncio.AbstractEventLoop) -> Ticker:
    # (DEFAULT_INTERVAL is read from the module dict at each call: tests may change it.)
    t = _tickers.get(loop)
    if t is None:
        t = _tickers[loop] = Ticker(loop, DEFAULT_INTERVAL)
    return t
