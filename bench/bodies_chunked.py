#!/usr/bin/env python3
"""Issue 17 item 3: the worker's CPU per MiB for chunked bodies against sized ones, both ways.

    bench/bodies_chunked.py [--mib 64] [--rounds 3]

This tree's gateway (one worker) in front of tests/support/bulk_peers.py's upstream (chunks cycling
from 1 byte to 1 MiB, extensions and a trailer); per round and kind, the worker's CPU (utime +
stime from /proc) over the MiB moved, and its read syscalls per MiB, every body checked by sha256. Hold /tmp/gateway-bench.lock.
"""
from __future__ import annotations

import argparse
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from tests.support.bulk_peers import BulkUpstream, digest, download, upload  # noqa: E402
from tests.support.gateway_proc import GatewayProcess  # noqa: E402

MIB = 1 << 20
HZ = os.sysconf("SC_CLK_TCK")


def cpu(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / HZ


def reads(pid: int) -> int:
    """read-family syscalls of the process so far (/proc/PID/io syscr)."""
    with open(f"/proc/{pid}/io") as f:
        for line in f:
            if line.startswith("syscr:"):
                return int(line.split()[1])
    return 0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--mib", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=3)
    a = ap.parse_args()
    up = BulkUpstream()
    cfg = (f'[[services]]\nname = "b"\ntargets = [{{ url = "{up.url}" }}]\n'
           '[[routes]]\nname = "b"\npath = "/"\nservice = "b"\n')
    gw = GatewayProcess(cfg, env={"GATEWAY_WORKERS": "1", "GATEWAY_ACCESS_LOG": "off",
                                  "GATEWAY_MAX_BODY_BYTES": str(1 << 30)})
    n = a.mib * MIB
    try:
        download(gw.port, f"/sized?n={8 * MIB}&seed=1")
        for r in range(a.rounds):
            row = []
            for kind in ("sized download", "chunked download", "sized upload", "chunked upload"):
                seed = 10 * r + len(row)
                t0, r0 = cpu(gw.pid), reads(gw.pid)
                if kind.endswith("download"):
                    st, got, sha = download(gw.port, f"/{kind.split()[0]}?n={n}&seed={seed}")
                    assert (st, got, sha) == (200, n, digest(seed, n)), kind
                else:
                    echo = upload(gw.port, "/sink", seed, n, chunk=kind.startswith("chunked"))
                    assert echo == {"len": n, "sha256": digest(seed, n)}, kind
                row.append(f"{kind} {(cpu(gw.pid) - t0) * 1e3 / a.mib:.3f} ({(reads(gw.pid) - r0) / a.mib:.0f} reads/MiB)")
            print(f"round {r + 1} ms/MiB: " + ", ".join(row), flush=True)
    finally:
        gw.kill()
        up.stop()


if __name__ == "__main__":
    main()
