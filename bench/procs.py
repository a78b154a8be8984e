"""Pinned peer processes for the side-by-side benchmarks (compare.py's topology: the proxy under
test on CPU 1; wrk, the upstream and helpers on CPU 0), started in their own session so that
stopping them takes their children too, with each one's output in a log file."""
from __future__ import annotations

import os
import signal
import subprocess
import tempfile
from types import TracebackType


class Procs:
    """`with Procs("gw-bench-") as procs: procs.start([...], cpu=1, log="x.log")`; all stopped
    (SIGCONT + SIGTERM, SIGKILL after 10 s) when the block ends, whatever happened in it."""

    def __init__(self, prefix: str) -> None:
        self.tmp = tempfile.mkdtemp(prefix=prefix)
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(self, cmd: list[str], cpu: int, env: dict[str, str] | None = None, cwd: str | None = None,
              log: str = "log") -> subprocess.Popen[bytes]:
        with open(os.path.join(self.tmp, log), "ab") as out:
            p = subprocess.Popen(["taskset", "-c", str(cpu), *cmd], env=env, cwd=cwd, start_new_session=True,
                                 stdout=out, stderr=subprocess.STDOUT)
        self.procs.append(p)
        return p

    def __enter__(self) -> Procs:
        return self

    def __exit__(self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None) -> None:
        for p in self.procs:
            try:
                os.killpg(p.pid, signal.SIGCONT)   # a stopped peer (SIGSTOP in a test) must hear SIGTERM
                os.killpg(p.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        for p in self.procs:
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait(10)
