"""An upstream whose faults a test switches at run time: `python tests/support/fault_upstream.py`.

It prints `listening <port> control <port>` and serves GET/HEAD requests (bodies are not read:
breaker tests send none) according to its mode, changed through the control port:

  ok            200, a small JSON body
  status N      answer N
  reset         read the request head, then close with a TCP RST before any response byte
  hang          read the request head and never answer (the gateway's upstream timeout fires)
  slow MS       answer 200 after MS milliseconds
  refuse        close the listening socket and every open connection: connects are refused
  (any mode but refuse reopens the listener on the same port)

Control protocol: one line per command on a TCP connection to the control port, one line back:
`mode <mode> [arg]` → `ok`; `stats` → JSON {"connections", "requests", "mode"}; `zero` resets the
counts. Counting connections is how the tests show that an open circuit makes none.
"""
from __future__ import annotations

import asyncio
import json
import socket
import struct
import sys


class State:
    def __init__(self) -> None:
        self.mode = "ok"
        self.arg = 0
        self.connections = 0
        self.requests = 0
        self.server: asyncio.base_events.Server | None = None
        self.port = 0
        self.live: set[asyncio.Transport] = set()


S = State()


class Upstream(asyncio.Protocol):
    def __init__(self) -> None:
        self.buf = b""
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        S.connections += 1
        self.transport = transport  # type: ignore[assignment]
        S.live.add(self.transport)  # type: ignore[arg-type]

    def connection_lost(self, exc: Exception | None) -> None:
        S.live.discard(self.transport)  # type: ignore[arg-type]

    def data_received(self, data: bytes) -> None:
        self.buf += data
        while b"\r\n\r\n" in self.buf:
            head, self.buf = self.buf.split(b"\r\n\r\n", 1)
            S.requests += 1
            self.answer(head)

    def answer(self, head: bytes) -> None:
        t = self.transport
        assert t is not None
        mode, arg = S.mode, S.arg
        if mode == "reset":
            sock = t.get_extra_info("socket")
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            t.abort()
        elif mode == "hang":
            pass
        elif mode == "slow":
            asyncio.get_running_loop().call_later(arg / 1000, self.reply, 200, head)
        elif mode == "status":
            self.reply(arg, head)
        else:
            self.reply(200, head)

    def reply(self, status: int, head: bytes) -> None:
        t = self.transport
        if t is None or t.is_closing():
            return
        body = json.dumps({"status": status, "mode": S.mode}).encode()
        t.write(b"HTTP/1.1 %d X\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
                % (status, len(body), b"" if head.startswith(b"HEAD ") else body))


async def listen() -> None:
    if S.server is None:
        S.server = await asyncio.get_running_loop().create_server(
            Upstream, "127.0.0.1", S.port, reuse_address=True)
        S.port = S.server.sockets[0].getsockname()[1]


async def control(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    while line := await reader.readline():
        words = line.decode().split()
        if words[:1] == ["stats"]:
            out = json.dumps({"connections": S.connections, "requests": S.requests, "mode": S.mode})
        elif words[:1] == ["zero"]:
            S.connections = S.requests = 0
            out = "ok"
        elif words[:1] == ["mode"] and len(words) >= 2:
            S.mode, S.arg = words[1], int(words[2]) if len(words) > 2 else 0
            if S.mode == "refuse":
                if S.server is not None:
                    S.server.close()
                    await S.server.wait_closed()
                    S.server = None
                for t in list(S.live):      # and the pooled keep-alive connections with it
                    t.close()
            else:
                await listen()
            out = "ok"
        else:
            out = "error"
        writer.write(out.encode() + b"\n")
        await writer.drain()
    writer.close()


async def main() -> None:
    await listen()
    ctl = await asyncio.start_server(control, "127.0.0.1", 0)
    print(f"listening {S.port} control {ctl.sockets[0].getsockname()[1]}", flush=True)
    await asyncio.Event().wait()


if __name__ == "__main__":
    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        sys.exit(0)
