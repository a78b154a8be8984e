"""Exceptions that escape into the event loop: one log line each, repeats counted and rate-limited.

asyncio's default handler printed a multi-line traceback per exception (20 Upgrade requests gave 200
log lines, a deep TOML 3,000), which a log shipper splitting on newlines tears apart. Every process's
loop goes through gateway.process.run_loop, which installs gateway.logs.LoopExceptionReporter.
"""
from __future__ import annotations

import asyncio
import logging
import os
import subprocess
import sys
import textwrap
from typing import Any

import pytest
import uvloop

from gateway.logs import LoopExceptionReporter, OneLineFormatter
from tests.support.gateway_proc import REPO


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def boom() -> None:
    raise ZeroDivisionError("division by zero")


def run_callbacks(reporter: LoopExceptionReporter, n: int, between: Any = None) -> None:
    loop = uvloop.new_event_loop()
    loop.set_exception_handler(reporter)
    try:
        for _ in range(n):
            loop.call_soon(boom)
        loop.run_until_complete(asyncio.sleep(0.01))
        if between is not None:
            between()
            loop.call_soon(boom)
            loop.run_until_complete(asyncio.sleep(0.01))
    finally:
        reporter.flush()
        loop.close()


def lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    fmt = OneLineFormatter()
    return [fmt.format(r) for r in caplog.records if r.name == "gateway.loop"]


def test_many_identical_errors_give_one_line_and_a_count(caplog: pytest.LogCaptureFixture) -> None:
    clock = Clock()
    with caplog.at_level(logging.INFO, logger="gateway"):
        run_callbacks(LoopExceptionReporter(clock=clock), 200)
    out = lines(caplog)
    assert len(out) == 2, out
    first, summary = out
    assert " ERROR loop: " in first
    assert "ZeroDivisionError: division by zero" in first
    assert "test_loop_errors.py" in first and "in boom" in first       # where it was raised
    assert "callback" in first                                          # what the loop was running
    assert "Traceback" not in first
    assert "199 more suppressed" in summary and "ZeroDivisionError" in summary
    assert all("\n" not in ln for ln in out)


def test_after_the_window_the_next_one_is_logged_again(caplog: pytest.LogCaptureFixture) -> None:
    clock = Clock()
    reporter = LoopExceptionReporter(clock=clock, window=10.0)

    def later() -> None:
        clock.now += 10.5

    with caplog.at_level(logging.INFO, logger="gateway"):
        run_callbacks(reporter, 3, between=later)
    out = lines(caplog)
    assert len(out) == 3, out   # the first, "2 more suppressed", then the next window's first
    assert "2 more suppressed" in out[1]
    assert "ZeroDivisionError: division by zero" in out[2] and "suppressed" not in out[2]


def test_different_errors_are_each_logged(caplog: pytest.LogCaptureFixture) -> None:
    def other() -> None:
        raise KeyError("k")

    loop = uvloop.new_event_loop()
    reporter = LoopExceptionReporter(clock=Clock())
    loop.set_exception_handler(reporter)
    with caplog.at_level(logging.INFO, logger="gateway"):
        loop.call_soon(boom)
        loop.call_soon(other)
        loop.call_soon(boom)
        loop.run_until_complete(asyncio.sleep(0.01))
        reporter.flush()
        loop.close()
    out = lines(caplog)
    assert len(out) == 3, out
    assert "ZeroDivisionError" in out[0] and "KeyError" in out[1] and "1 more suppressed" in out[2]


def test_debug_level_keeps_the_traceback_on_the_same_line(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.DEBUG, logger="gateway"):
        run_callbacks(LoopExceptionReporter(clock=Clock()), 5)
    out = lines(caplog)
    assert len(out) == 2, out
    assert "Traceback (most recent call last):" in out[0] and "\\n" in out[0] and "\n" not in out[0]


def test_a_protocol_error_names_the_protocol(caplog: pytest.LogCaptureFixture) -> None:
    class BadProtocol(asyncio.Protocol):
        def data_received(self, data: bytes) -> None:
            raise ValueError("bad bytes")

    async def main() -> None:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(BadProtocol, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        _, w = await asyncio.open_connection("127.0.0.1", port)
        w.write(b"x")
        await w.drain()
        await asyncio.sleep(0.1)
        w.close()
        server.close()

    loop = uvloop.new_event_loop()
    reporter = LoopExceptionReporter(clock=Clock())
    loop.set_exception_handler(reporter)
    with caplog.at_level(logging.INFO, logger="gateway"):
        loop.run_until_complete(main())
        loop.close()
    (line,) = lines(caplog)
    assert "ValueError: bad bytes" in line and "BadProtocol" in line and "data_received" in line


def test_errors_without_an_exception_are_one_line_too(caplog: pytest.LogCaptureFixture) -> None:
    reporter = LoopExceptionReporter(clock=Clock())
    loop = uvloop.new_event_loop()
    with caplog.at_level(logging.INFO, logger="gateway"):
        reporter(loop, {"message": "Task was destroyed but it is pending!\nsecond line"})
    loop.close()
    (line,) = lines(caplog)
    assert "Task was destroyed but it is pending!" in line and "\n" not in line


def test_a_broken_context_never_raises_out_of_the_handler(caplog: pytest.LogCaptureFixture) -> None:
    class Evil:
        def __repr__(self) -> str:
            raise RuntimeError("no repr")

    reporter = LoopExceptionReporter(clock=Clock())
    loop = uvloop.new_event_loop()
    with caplog.at_level(logging.INFO, logger="gateway"):
        reporter(loop, {"message": "x", "exception": ValueError("v"), "handle": Evil(), "protocol": Evil()})
    loop.close()
    assert len(lines(caplog)) == 1


# --- the real thing: a process whose loop runs through gateway.process.run_loop -----------------

SCRIPT = textwrap.dedent("""
    import asyncio, os, sys
    from gateway.logs import setup_logging
    from gateway.process import run_loop

    def boom():
        raise ZeroDivisionError("division by zero")

    async def main():
        loop = asyncio.get_running_loop()
        for _ in range(300):
            loop.call_soon(boom)
        await asyncio.sleep(0.05)
        # a task that dies with nobody awaiting it: "Task exception was never retrieved"
        async def orphan():
            raise KeyError("orphan")
        t = loop.create_task(orphan())
        await asyncio.sleep(0.01)
        del t
        return 0

    setup_logging(os.environ)
    sys.exit(run_loop(main()))
""")


@pytest.mark.parametrize("level", ["info", "debug"])
def test_run_loop_installs_the_reporter(level: str) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}
    env.update(PYTHONPATH=str(REPO), GATEWAY_LOG_LEVEL=level)
    p = subprocess.run([sys.executable, "-c", SCRIPT], env=env, cwd=str(REPO), capture_output=True,
                       text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    out = p.stderr.splitlines()
    boom = [ln for ln in out if "ZeroDivisionError" in ln]
    assert len(boom) == 2, p.stderr                    # the first, then "299 more suppressed"
    assert "299 more suppressed" in boom[1]
    assert len(out) <= 4, p.stderr
    assert all(" gateway[" in ln for ln in out), p.stderr   # every line in the gateway's format
    assert ("Traceback" in p.stderr) == (level == "debug")
