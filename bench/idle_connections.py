#!/usr/bin/env python3
"""One gateway worker holding N idle keep-alive client connections: how much memory does it take?

    python bench/idle_connections.py [--conns 10000] [--batch 500] [--out bench/results/http-idle-connections.md]

Starts the echo upstream (tests/support/upstream.py) and `python -m gateway run` (one worker, the
admin listener included, GATEWAY_KEEPALIVE_TIMEOUT long enough not to interfere), then opens N client
connections in batches, sends one GET on each and reads its response, and keeps them all open and
idle. The gateway's RSS (VmRSS from /proc/<pid>/status) is read before the first connection and
once all N are idle; its open file descriptors are counted to prove the connections are held.
Finally one request is sent on a sample of the idle connections to check they still work.
RLIMIT_NOFILE is raised for this script; the gateway raises its own (gateway.worker).
"""
from __future__ import annotations

import argparse
import asyncio
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.support.gateway_proc import GatewayProcess, UpstreamProcess  # noqa: E402

REQUEST = b"GET /idle HTTP/1.1\r\nHost: bench\r\n\r\n"


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def fd_count(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def raise_nofile(n: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = min(max(n, soft), hard) if hard != resource.RLIM_INFINITY else max(n, soft)
    resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))


async def read_response(reader: asyncio.StreamReader) -> int:
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head[9:12])
    length = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":", 1)[1])
    await reader.readexactly(length)
    return status


async def open_one(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(REQUEST)
    status = await read_response(reader)
    if status != 200:
        raise RuntimeError(f"status {status}")
    return reader, writer


async def run(port: int, pid: int, conns: int, batch: int) -> dict[str, float]:
    held: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
    t0 = time.monotonic()
    while len(held) < conns:
        n = min(batch, conns - len(held))
        held += await asyncio.gather(*(open_one(port) for _ in range(n)))
    opened = time.monotonic() - t0
    await asyncio.sleep(2.0)  # let the gateway settle (pool trimming, GC)
    rss = rss_kib(pid)
    fds = fd_count(pid)
    # The connections are idle, not dead: a request on a sample of them still works.
    sample = held[:: max(1, conns // 100)]
    for _reader, writer in sample:
        writer.write(REQUEST)
    statuses = await asyncio.gather(*(read_response(r) for r, _ in sample))
    ok = sum(1 for s in statuses if s == 200)
    for _, writer in held:
        writer.close()
    return {"open_seconds": opened, "rss_kib": rss, "fds": fds, "sample": len(sample), "sample_ok": ok}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    ap.add_argument("--conns", type=int, default=10000)
    ap.add_argument("--batch", type=int, default=500)
    ap.add_argument("--out", default=None, help="write the markdown result here")
    args = ap.parse_args()
    raise_nofile(args.conns + 1000)

    up = UpstreamProcess()
    config = f'[[services]]\nname = "up"\ntargets = [{{ url = "{up.url}" }}]\n' \
             '[[routes]]\nname = "all"\npath = "/"\nservice = "up"\n'
    gw = GatewayProcess(config, env={
        "GATEWAY_KEEPALIVE_TIMEOUT": "600",
        "GATEWAY_MAX_CONNECTIONS": str(args.conns + 100),
    })
    try:
        time.sleep(1.0)
        base = rss_kib(gw.pid)
        import uvloop

        res = uvloop.run(run(gw.port, gw.pid, args.conns, args.batch))
    finally:
        gw.kill()
        up.stop()

    per_conn = (res["rss_kib"] - base) * 1024 / args.conns
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True,
                            text=True).stdout.strip()
    load = Path("/proc/loadavg").read_text().split()[:3]
    lines = [
        "# One worker, idle keep-alive connections: memory",
        "",
        f"- date: {time.strftime('%Y-%m-%d %H:%M:%S %Z')}; commit {commit}; load average {' '.join(load)}",
        f"- machine: {platform.machine()}, {os.cpu_count()} CPUs, Linux {platform.release()}, Python {platform.python_version()}",
        f"- command: `python bench/idle_connections.py --conns {args.conns} --batch {args.batch}`",
        "",
        "| figure | value |",
        "| --- | --- |",
        f"| idle keep-alive client connections held | {args.conns} |",
        f"| gateway open fds when all are idle | {res['fds']} |",
        f"| RSS before the first connection | {base / 1024:.1f} MiB |",
        f"| RSS with all connections idle | {res['rss_kib'] / 1024:.1f} MiB |",
        f"| RSS per idle connection | {per_conn / 1024:.2f} KiB |",
        f"| time to open them (batches of {args.batch}, one request each) | {res['open_seconds']:.1f} s |",
        f"| sample of idle connections still answering | {res['sample_ok']}/{res['sample']} |",
        "",
        f"Target (issue 2): under 200 MB with 10,000 idle connections: "
        f"{'met' if res['rss_kib'] / 1024 < 200 else 'NOT met'}.",
        "",
    ]
    text = "\n".join(lines)
    print(text)
    if args.out:
        Path(args.out).write_text(text)
    return 0 if res["sample_ok"] == res["sample"] else 1


if __name__ == "__main__":
    sys.exit(main())
