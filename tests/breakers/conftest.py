"""Fixtures of the circuit-breaker tests: a fault upstream process and small request helpers."""
from __future__ import annotations

import json
import socket
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest

from tests.support.gateway_proc import REPO, gateway  # noqa: F401 - the fixture, re-exported


class FaultUpstream:
    """tests/support/fault_upstream.py in its own process, driven over its control port."""

    def __init__(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, str(REPO / "tests" / "support" / "fault_upstream.py")], cwd=str(REPO),
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        assert self.proc.stdout is not None
        words = self.proc.stdout.readline().split()     # listening PORT control PORT
        if words[:1] != ["listening"]:
            self.stop()
            raise RuntimeError(f"fault upstream did not start: {words!r}")
        self.port, self.control_port = int(words[1]), int(words[3])
        self.url = f"http://127.0.0.1:{self.port}"
        self.id = f"127.0.0.1:{self.port}"
        self._ctl = socket.create_connection(("127.0.0.1", self.control_port), timeout=10)
        self._rf = self._ctl.makefile("rb")

    def _ask(self, line: str) -> str:
        self._ctl.sendall(line.encode() + b"\n")
        return self._rf.readline().decode().strip()

    def mode(self, mode: str, arg: int | None = None) -> None:
        assert self._ask(f"mode {mode}" + (f" {arg}" if arg is not None else "")) == "ok"

    def stats(self) -> dict[str, Any]:
        return json.loads(self._ask("stats"))

    @property
    def connections(self) -> int:
        return int(self.stats()["connections"])

    @property
    def requests(self) -> int:
        return int(self.stats()["requests"])

    def zero(self) -> None:
        assert self._ask("zero") == "ok"

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(10)
        if self.proc.stdout is not None:
            self.proc.stdout.close()


@pytest.fixture
def fault() -> Iterator[FaultUpstream]:
    up = FaultUpstream()
    yield up
    up._ctl.close()
    up.stop()
