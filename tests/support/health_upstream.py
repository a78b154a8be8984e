"""A small upstream whose health the test controls: `python health_upstream.py PORT NAME MODEFILE`.

Every request gets 200 with the body NAME (so a test sees which target served it), except the
health path `/health`, answered by what MODEFILE holds when the probe arrives: "ok" (200), "fail"
(503) or "hang" (read the request, never answer); each probe adds a byte to MODEFILE.hits. A fixed PORT lets a test SIGKILL it and start it
again on the same address ("comes back"). Prints `listening` once bound.
"""
from __future__ import annotations

import asyncio
import sys


async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, name: bytes, modefile: str) -> None:
    try:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            line = head.split(b"\r\n", 1)[0]
            path = line.split(b" ")[1] if line.count(b" ") >= 2 else b"/"
            length = 0
            for h in head.split(b"\r\n")[1:]:
                k, _, v = h.partition(b":")
                if k.strip().lower() == b"content-length":
                    length = int(v.strip())
            if length:
                await reader.readexactly(length)
            status, body = b"200 OK", name
            if path == b"/health":
                with open(modefile + ".hits", "a") as f:
                    f.write("x")
                try:
                    mode = open(modefile).read().strip()
                except OSError:
                    mode = "ok"
                if mode == "hang":
                    await asyncio.sleep(3600)
                if mode == "fail":
                    status, body = b"503 Unavailable", b"unhealthy"
            writer.write(b"HTTP/1.1 " + status + b"\r\nContent-Length: " + str(len(body)).encode() +
                         b"\r\nContent-Type: text/plain\r\n\r\n" + body)
            await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionError, asyncio.LimitOverrunError, ValueError):
        pass
    finally:
        writer.close()


async def main(port: int, name: str, modefile: str) -> None:
    server = await asyncio.start_server(lambda r, w: handle(r, w, name.encode(), modefile), "127.0.0.1", port,
                                        reuse_address=True)
    print("listening", flush=True)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]), sys.argv[2], sys.argv[3]))
