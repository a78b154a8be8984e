"""A second process for tests/state/test_memory_processes.py: attaches to a NodeMemory by name,
as a spawned worker does (`python -m tests.support.memory_child <command> <segment> ...`), and
prints JSON."""
from __future__ import annotations

import json
import random
import sys
import time

from gateway._fast.breaker import SHM_SIZE, CircuitBreaker
from gateway.state.memory import NodeMemory


def main(argv: list[str]) -> int:
    cmd, seg = argv[0], argv[1]
    mem = NodeMemory.attach(seg)
    if cmd == "place":
        # place <seg> <holder> <size> <name>...: offsets and the first 8 bytes seen, then write a
        # marker the parent checks.
        holder, size, names = int(argv[2]), int(argv[3]), argv[4:]
        out = {}
        for name in names:
            view = mem.place(name, size, holder)
            out[name] = [mem.info(name).offset, bytes(view[:8]).hex()]  # type: ignore[union-attr]
            view[8:16] = b"child..."
            view.release()
        print(json.dumps(out))
    elif cmd == "race":
        # race <seg> <holder> <count> <seed>: place count names in a shuffled order, wait for a
        # go byte on stdin so two children really overlap.
        holder, count, seed = int(argv[2]), int(argv[3]), int(argv[4])
        sizes = {f"counter/requests/r{i}/200": 800 if i % 3 == 0 else 64 for i in range(count)}
        names = sorted(sizes)
        random.Random(seed).shuffle(names)
        sys.stdout.write("ready\n")
        sys.stdout.flush()
        sys.stdin.read(1)
        for name in names:
            mem.place(name, sizes[name], holder)
        print(json.dumps({i.name: i.offset for i in mem.objects()}))
    elif cmd == "breaker":
        # breaker <seg> <name> <failures> <now>: record failures on the shared breaker.
        view = mem.place(argv[2], SHM_SIZE, 1, kind="breaker")
        b = CircuitBreaker(failure_threshold=5, buffer=view)
        now = float(argv[4])
        for _ in range(int(argv[3])):
            b.record(now, False, 0.01)
        print(json.dumps({"state": b.state}))
        del b
        view.release()
    elif cmd == "hold-lock":
        # hold-lock <seg>: take the allocator lock (mid-change: dirty set) and wait to be killed.
        mem._acquire(time.monotonic())
        sys.stdout.write("locked\n")
        sys.stdout.flush()
        time.sleep(60)
    else:
        raise SystemExit(f"unknown command {cmd}")
    mem.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
