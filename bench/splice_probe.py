#!/usr/bin/env python3
"""Zero copy, investigated (issue 17 item 5): CPU per MiB of a relay moving a body socket to socket,
user space (recv_into one reused buffer, then send: two copies, like the gateway's Content-Length
path) against splice(2) through a pipe (no copy to user space: what HAProxy does).

    splice_probe.py [--mib 2048] [--rounds 3] [--piece 262144]

One process each: a sender writing a fixed buffer as fast as it can, the relay (measured: its CPU
time from getrusage over the bytes it moved), a sink reading and dropping. Loopback TCP, blocking
sockets (no event loop: what is compared is the kernel's work per MiB plus one syscall pair per
piece, the same for both). Prints ms of relay CPU per MiB per round and the ratio splice/user.
"""
from __future__ import annotations

import argparse
import os
import resource
import socket
import time
from multiprocessing import Process


def sender(port: int, total: int, piece: int) -> None:
    s = socket.create_connection(("127.0.0.1", port))
    buf = os.urandom(piece)
    sent = 0
    while sent < total:
        sent += s.send(buf[: min(piece, total - sent)])
    s.close()


def sink(port_q: socket.socket) -> None:
    c, _ = port_q.accept()
    buf = bytearray(1 << 20)
    while c.recv_into(buf):
        pass
    c.close()


def relay(mode: str, total: int, piece: int) -> tuple[float, float]:
    """Returns (cpu seconds, wall seconds) of the relay moving `total` bytes."""
    src_l = socket.create_server(("127.0.0.1", 0))
    dst_l = socket.create_server(("127.0.0.1", 0))
    ps = Process(target=sink, args=(dst_l,))
    ps.start()
    out = socket.create_connection(dst_l.getsockname())
    pw = Process(target=sender, args=(src_l.getsockname()[1], total, piece))
    pw.start()
    inp, _ = src_l.accept()
    t0, w0 = resource.getrusage(resource.RUSAGE_SELF), time.monotonic()
    moved = 0
    if mode == "user":
        buf = bytearray(piece)
        view = memoryview(buf)
        while moved < total:
            n = inp.recv_into(buf)
            if not n:
                break
            out.sendall(view[:n])
            moved += n
    else:
        r, w = os.pipe()
        try:
            import fcntl

            fcntl.fcntl(w, 1031, piece)  # F_SETPIPE_SZ: a pipe as large as a read
        except OSError:
            pass
        fi, fo = inp.fileno(), out.fileno()
        while moved < total:
            n = os.splice(fi, w, piece)
            if not n:
                break
            left = n
            while left:
                left -= os.splice(r, fo, left)
            moved += n
        os.close(r)
        os.close(w)
    t1, w1 = resource.getrusage(resource.RUSAGE_SELF), time.monotonic()
    out.close()
    inp.close()
    pw.join()
    ps.join()
    src_l.close()
    dst_l.close()
    assert moved == total, (moved, total)
    return (t1.ru_utime - t0.ru_utime) + (t1.ru_stime - t0.ru_stime), w1 - w0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--mib", type=int, default=2048)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--piece", type=int, default=262144)
    a = ap.parse_args()
    total = a.mib << 20
    best: dict[str, float] = {}
    for r in range(a.rounds):
        for mode in ("user", "splice"):
            cpu, wall = relay(mode, total, a.piece)
            ms = cpu * 1e3 / a.mib
            best[mode] = min(best.get(mode, ms), ms)
            print(f"round {r + 1} {mode:<6} relay cpu {ms:6.3f} ms/MiB  {a.mib / wall / 1024:5.2f} GiB/s", flush=True)
    print(f"best: user {best['user']:.3f} splice {best['splice']:.3f} ms/MiB  splice/user={best['splice'] / best['user']:.2f}")


if __name__ == "__main__":
    main()
