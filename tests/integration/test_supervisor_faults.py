"""The supervisor under faults: crash loops, failed spawns, stalled workers, a second instance on
the port, workers that can never start, signals during start-up.

Some tests drive a Supervisor in this test's loop (its constructor takes the clock, the scheduler
and the worker command, so a thousand restarts take seconds); the others run the real `gateway`
command as a subprocess and look at it from outside (/ready, /proc, exit codes, stderr).
"""
from __future__ import annotations

import asyncio
import json
import logging
import os
import resource
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import pytest
import uvloop

from gateway.config import load_settings
from gateway.supervisor import MAX_BACKOFF, Supervisor, worker_command
from tests.support.gateway_proc import (  # noqa: F401 - gateway, upstream are fixtures
    REPO,
    free_port,
    gateway,
    http_get,
    port_accepts,
    routes_toml,
    upstream,
    wait_until,
    worker_pids,
)


def run(coro_fn: Callable[[], Awaitable[Any]], timeout: float = 120) -> Any:
    loop = uvloop.new_event_loop()
    try:
        return loop.run_until_complete(asyncio.wait_for(coro_fn(), timeout))
    finally:
        loop.close()


async def until(pred: Callable[[], Any], timeout: float = 15.0, what: str = "condition") -> Any:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not (value := pred()):
        if loop.time() > deadline:
            raise AssertionError(f"{what} not reached within {timeout}s")
        await asyncio.sleep(0.01)
    return value


class Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def lines(self, level: int = logging.INFO) -> list[str]:
        return [r.getMessage() for r in self.records if r.levelno >= level]


@pytest.fixture
def sup_log() -> Iterator[Records]:
    """The supervisor's log records at INFO and above (the level an operator runs with)."""
    logger = logging.getLogger("gateway.supervisor")
    handler = Records()
    old_level = logger.level
    logger.setLevel(logging.INFO)
    logger.addHandler(handler)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old_level)


def sup_env(monkeypatch: pytest.MonkeyPatch, workers: int = 1, **extra: str) -> dict[str, str]:
    """Settings for an in-process supervisor; the same variables are in os.environ, which its
    workers inherit."""
    env = {"GATEWAY_WORKERS": str(workers), "GATEWAY_HOST": "127.0.0.1", "GATEWAY_PORT": str(free_port()),
           "GATEWAY_ADMIN_HOST": "127.0.0.1", "GATEWAY_ADMIN_PORT": str(free_port()),
           "GATEWAY_DRAIN_TIMEOUT": "2", "GATEWAY_LOG_LEVEL": "warning", **extra}
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    return env


# --- 7: a crash loop left overnight ----------------------------------------------------------------
def test_a_thousand_fast_crashes_back_off_to_the_cap_log_per_step_and_stop_promptly(
        monkeypatch: pytest.MonkeyPatch, sup_log: Records) -> None:
    """A worker served, then every replacement dies at start (a bad deploy left overnight): the
    wait grows to 30 s and stays there (0.1 s x 2^n overflowed a float after 1024 crashes, the
    supervisor stopped replacing workers and SIGTERM hung), the log says so once per step plus a
    summary now and then rather than once per crash, and a stop is prompt after all of it."""
    env = sup_env(monkeypatch)
    crash = shutil.which("false")
    assert crash is not None
    spawned: list[int] = []
    delays: list[float] = []
    CRASHES = 1100          # > 1024: where 2 ** n overflowed

    def command(index: int) -> list[str]:
        spawned.append(index)
        # The first worker is the real one and serves; every replacement dies at once.
        return worker_command(index) if len(spawned) == 1 else [crash]

    async def main() -> None:
        loop = asyncio.get_running_loop()
        errors: list[dict[str, Any]] = []
        loop.set_exception_handler(lambda _loop, ctx: errors.append(ctx))

        def call_later(delay: float, fn: Callable[[], None]) -> Any:
            delays.append(delay)
            return loop.call_later(delay / 100_000, fn)    # 30 s -> 0.3 ms: the test's time source

        sup = Supervisor(load_settings(env), call_later=call_later, command=command)
        task = loop.create_task(sup.serve())
        await until(lambda: sup.slots[0].listening, what="the first worker listening")
        first = sup.slots[0].proc
        assert first is not None
        log_mark = len(sup_log.records)
        os.kill(first.pid, signal.SIGKILL)
        t0 = time.monotonic()
        await until(lambda: sup.restarts >= CRASHES or task.done(), timeout=90, what=f"{CRASHES} restarts")
        elapsed = time.monotonic() - t0
        assert not task.done(), task
        assert not errors, errors[:3]
        assert delays[-1] == MAX_BACKOFF == 30.0 and max(delays) == 30.0
        assert delays[:3] == [0.2, 0.4, 0.8]
        lines = [r.getMessage() for r in sup_log.records[log_mark:] if r.levelno >= logging.INFO]
        # One line per backoff step (0.2 ... 25.6, 30) and a summary every few crashes at the cap,
        # not one or two per crash.
        assert len(lines) <= 20 + CRASHES // 10, (len(lines), lines[:30])
        assert any("failed starts in a row" in m for m in lines), lines[-5:]
        # SIGTERM (what the handler calls) in the middle of the crash loop: serve() returns at once.
        t1 = time.monotonic()
        sup.stop()
        assert await asyncio.wait_for(task, 5) == 0
        stop_time = time.monotonic() - t1
        assert stop_time < 1.0, stop_time
        print(f"\n{sup.restarts} crash-restarts in {elapsed:.1f}s (delays / 10^5), {len(lines)} log lines, "
              f"stopped in {stop_time * 1000:.0f} ms")

    run(main)


# --- spawning: the signal mask workers start with, and their parent-death signal --------------------
STARTUP = (signal.SIGHUP, signal.SIGTERM, signal.SIGINT, signal.SIGUSR1)


def proc_status(pid: int) -> dict[str, str]:
    try:
        with open(f"/proc/{pid}/status") as f:
            return dict(line.rstrip("\n").split(":\t", 1) for line in f if ":\t" in line)
    except (FileNotFoundError, ProcessLookupError):
        return {}


def held(pid: int, field: str = "SigBlk") -> set[int]:
    """Which of STARTUP are in the process's blocked (SigBlk) / caught (SigCgt) mask."""
    raw = proc_status(pid).get(field)
    if raw is None:
        return set()
    mask = int(raw, 16)
    return {int(s) for s in STARTUP if mask & (1 << (int(s) - 1))}


def gone(pid: int) -> bool:
    return proc_status(pid).get("State", "Z").startswith(("Z", "X"))


def test_workers_unblock_their_signals_once_serving_and_die_with_a_killed_supervisor(gateway, upstream) -> None:  # noqa: F811
    gw = gateway(routes_toml(upstream.url, ["/"]), env={"GATEWAY_WORKERS": "2"})
    pids = wait_until(lambda: (p := worker_pids(gw.admin_port)) and len(p) == 2 and p)
    assert isinstance(pids, list)
    wait_until(lambda: gw.stderr.count("worker: listening on") >= 2)
    for pid in pids:
        # Started with them blocked (spawned under the supervisor's block), unblocked by the
        # worker once its loop handles them: none stays blocked, and all four are caught.
        assert held(pid) == set(), proc_status(pid).get("SigBlk")
        assert held(pid, "SigCgt") == set(STARTUP), proc_status(pid).get("SigCgt")
    os.kill(gw.pid, signal.SIGKILL)
    wait_until(lambda: all(gone(p) for p in pids), timeout=10)


# --- 9: /ready counts serving workers; a silent worker is killed and replaced ------------------------
def ready(admin_port: int) -> tuple[int, dict[str, Any]]:
    status, _, body = http_get(admin_port, "/ready", timeout=5)
    return status, json.loads(body)


def test_ready_only_once_a_worker_serves(gateway, upstream) -> None:  # noqa: F811
    """/ready answered 200 ~0.2 s after start while the data port still refused connections."""
    gw = gateway(routes_toml(upstream.url, ["/"]), env={"GATEWAY_WORKERS": "2"}, wait=False)
    deadline = time.monotonic() + 20
    early = []
    while time.monotonic() < deadline:
        assert gw.alive(), gw.stderr
        if port_accepts(gw.host, gw.admin_port):
            status, body = ready(gw.admin_port)
            if status == 200:
                # Ready means a worker serves: the data port takes connections now.
                if not port_accepts(gw.host, gw.port):
                    early.append(body)
                break
        time.sleep(0.01)
    else:
        raise AssertionError(f"never ready; stderr:\n{gw.stderr}")
    assert not early, f"/ready said 200 while the data port refused connections: {early}"
    wait_until(lambda: ready(gw.admin_port)[1]["workers"] == 2)
    assert gw.stop() == 0


def test_a_stopped_worker_is_reported_within_3s_and_replaced_after_the_watchdog(gateway, upstream) -> None:  # noqa: F811
    watchdog = 5.0
    gw = gateway(routes_toml(upstream.url, ["/"]),
                 env={"GATEWAY_WORKERS": "2", "GATEWAY_WORKER_WATCHDOG": str(watchdog)})
    wait_until(lambda: (r := ready(gw.admin_port))[0] == 200 and r[1]["workers"] == 2, timeout=15)
    pids = worker_pids(gw.admin_port)
    victim = pids[0]
    t0 = time.monotonic()
    os.kill(victim, signal.SIGSTOP)
    try:
        # Reported: within ~3 s (its last beat ages past 3 s; beats come every 0.5 s).
        status, body = wait_until(lambda: (r := ready(gw.admin_port))[1]["workers"] == 1 and r, timeout=6)
        t_reported = time.monotonic() - t0
        assert body["missing"] == 1 and body["stalled"] == 1, body
        # Its socket still takes a share of new connections that nobody accepts: not ready.
        assert status == 503, body
        assert t_reported < 4.0, t_reported
        # Replaced: SIGKILLed after the watchdog, a new worker serves, 200 with both again.
        new = wait_until(lambda: (p := worker_pids(gw.admin_port)) and victim not in p and len(p) == 2 and p,
                         timeout=watchdog + 10)
        t_killed = time.monotonic() - t0
        wait_until(lambda: (r := ready(gw.admin_port))[0] == 200 and r[1]["workers"] == 2, timeout=15)
        t_serving = time.monotonic() - t0
    finally:
        try:
            os.kill(victim, signal.SIGCONT)
        except ProcessLookupError:
            pass
    assert watchdog - 0.5 < t_killed < watchdog + 3, t_killed
    assert isinstance(new, list) and pids[1] in new
    err = gw.stderr
    assert f"worker 0 (pid {victim}) silent for" in err or f"(pid {victim}) silent for" in err, err[-3000:]
    assert "event worker_stalled" in err, err[-3000:]
    print(f"\nSIGSTOP -> /ready reports it missing: {t_reported:.2f}s; -> killed and replaced: {t_killed:.2f}s; "
          f"-> replacement serving (/ready 200, 2 workers): {t_serving:.2f}s (GATEWAY_WORKER_WATCHDOG={watchdog:g})")
    assert gw.stop() == 0


# --- 8: a failed spawn is retried -------------------------------------------------------------------
def exhausting_limit(pid: int) -> int:
    """An RLIMIT_NOFILE for `pid` that leaves exactly one fd number free below it: the admin
    listener can still accept one connection at a time, but a worker spawn (a socketpair, /dev/null
    and Popen's error pipe: 5 fds) fails with EMFILE."""
    used = {int(fd) for fd in os.listdir(f"/proc/{pid}/fd")}
    free = 0
    for limit in range(0, max(used) + 3):
        if free == 1:
            return limit
        if limit not in used:
            free += 1
    raise AssertionError("unreachable")


def test_a_failed_spawn_is_retried_until_the_resource_returns(gateway, upstream) -> None:  # noqa: F811
    gw = gateway(routes_toml(upstream.url, ["/"]), env={"GATEWAY_WORKERS": "2"})
    wait_until(lambda: (r := ready(gw.admin_port))[0] == 200 and r[1]["workers"] == 2, timeout=15)
    pids = worker_pids(gw.admin_port)
    time.sleep(0.2)             # the admin connections above are closed on the supervisor's side too
    soft, hard = resource.prlimit(gw.pid, resource.RLIMIT_NOFILE)
    resource.prlimit(gw.pid, resource.RLIMIT_NOFILE, (exhausting_limit(gw.pid), hard))
    try:
        os.kill(pids[0], signal.SIGKILL)
        gw.wait_stderr("worker 0 could not be spawned", timeout=5)
        # Meanwhile /ready says one is missing (and still 200: the other serves the whole port).
        status, body = ready(gw.admin_port)
        assert (status, body["workers"], body["missing"]) == (200, 1, 1), body
        wait_until(lambda: gw.stderr.count("worker 0 could not be spawned") >= 3, timeout=10)
        assert "Too many open files" in gw.stderr
    finally:
        resource.prlimit(gw.pid, resource.RLIMIT_NOFILE, (soft, hard))
    t0 = time.monotonic()
    wait_until(lambda: (r := ready(gw.admin_port))[0] == 200 and r[1]["workers"] == 2, timeout=40)
    recovered = time.monotonic() - t0
    new = worker_pids(gw.admin_port)
    assert len(new) == 2 and pids[0] not in new and pids[1] in new
    print(f"\nfd limit restored -> 2 workers serving again: {recovered:.2f}s "
          f"(retries {gw.stderr.count('worker 0 could not be spawned')} logged steps)")
    assert gw.stop() == 0


# --- 10: one gateway per address; workers that can never start --------------------------------------
@pytest.mark.parametrize("workers", ["1", "2"])
def test_a_second_gateway_on_the_same_port_exits_1_naming_the_port_and_the_pid(gateway, upstream, workers: str) -> None:  # noqa: F811
    """Both started at once (the race a probe bind cannot see): exactly one serves."""
    port = free_port()
    env = {"GATEWAY_WORKERS": workers, "GATEWAY_PORT": str(port)}
    a = gateway(routes_toml(upstream.url, ["/"]), env=env, wait=False)
    b = gateway(routes_toml(upstream.url, ["/"]), env=env, wait=False)
    loser = wait_until(lambda: next((g for g in (a, b) if not g.alive()), None), timeout=10)
    winner = b if loser is a else a
    assert loser.wait(5) == 1, loser.stderr
    last = loser.stderr.strip().splitlines()[-1]
    assert last.startswith("gateway: ") and f":{port}" in last and f"pid {winner.pid}" in last, loser.stderr
    winner.wait_ready()
    time.sleep(0.5)
    assert winner.alive()
    assert http_get(port, "/x")[0] == 200
    assert winner.stop() == 0


def test_two_gateways_share_a_port_only_when_both_opt_in(gateway, upstream) -> None:  # noqa: F811
    port = free_port()
    env = {"GATEWAY_WORKERS": "2", "GATEWAY_PORT": str(port), "GATEWAY_REUSE_PORT": "shared"}
    a = gateway(routes_toml(upstream.url, ["/"]), env=env)
    b = gateway(routes_toml(upstream.url, ["/"]), env=env)
    wait_until(lambda: ready(a.admin_port)[0] == 200 and ready(b.admin_port)[0] == 200)
    c = gateway(routes_toml(upstream.url, ["/"]), env={"GATEWAY_WORKERS": "2", "GATEWAY_PORT": str(port)}, wait=False)
    assert c.wait(10) == 1
    assert f"pids {min(a.pid, b.pid)}, {max(a.pid, b.pid)}) share it" in c.stderr, c.stderr
    assert a.alive() and b.alive()
    assert a.stop() == 0 and b.stop() == 0


def test_workers_that_can_never_start_make_the_supervisor_exit_1_with_their_reason(
        monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]) -> None:
    """The port was free when the supervisor checked it, and taken (by a program without
    SO_REUSEPORT) when its workers bind: no worker ever serves. Like nginx when it cannot bind, the
    supervisor gives up after a few attempts and exits 1 with the workers' own error."""
    blocker = socket.socket()
    blocker.bind(("127.0.0.1", 0))
    blocker.listen()
    taken = blocker.getsockname()[1]
    env = sup_env(monkeypatch, workers=2)          # the supervisor's settings: a free port
    monkeypatch.setenv("GATEWAY_PORT", str(taken))  # what its workers read: the taken one
    sup = Supervisor(load_settings(env))
    # Backstop for the code before the fix (it crash-looped for ever): SIGTERM ends run() with 0.
    backstop = threading.Timer(30, os.kill, (os.getpid(), signal.SIGTERM))
    backstop.start()
    t0 = time.monotonic()
    try:
        code = sup.run()
    finally:
        backstop.cancel()
        blocker.close()
    elapsed = time.monotonic() - t0
    err = capfd.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("gateway: ")]
    assert code == 1, err[-3000:]
    assert lines and f"cannot listen on 127.0.0.1:{taken}: address already in use" in lines[-1], err[-3000:]
    assert elapsed < 15, elapsed
    print(f"\nno worker could start -> exit 1 after {elapsed:.1f}s: {lines[-1]}")


# --- 11: signals during start-up ----------------------------------------------------------------------
def children(pid: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(p) for p in f.read().split()]
    except OSError:
        return []


def wait_held_from_the_start(gw: Any) -> None:
    """Until the process holds SIGHUP: its first instruction (nothing of ours runs earlier; before
    it only the interpreter starts, and a signal there is the launcher's business)."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and gw.alive() and signal.SIGHUP not in held(gw.pid):
        time.sleep(0.0005)
    assert gw.alive(), gw.stderr
    assert set(STARTUP) <= held(gw.pid), ("the start-up signals are not held: their default action "
                                          f"kills the process while it starts ({proc_status(gw.pid).get('SigBlk')})")


def test_sighup_during_startup_never_kills_the_gateway_and_the_reload_is_applied(gateway, upstream) -> None:  # noqa: F811
    gw = gateway(routes_toml(upstream.url, ["/a"]), env={"GATEWAY_WORKERS": "2"}, wait=False)
    wait_held_from_the_start(gw)
    sent = 0
    changed = False
    deadline = time.monotonic() + 30
    # SIGHUP every ~2 ms from the first instruction until a worker serves. The file changes once
    # the supervisor has spawned a worker (it has read the file by then): from there on the
    # SIGHUPs ask for a reload that must be applied, in the supervisor's snapshot and in workers
    # that are still starting. (Waiting to see both workers lost the race on a loaded machine: the
    # second can be spawned and the first listening within one turn of this loop, which then ended
    # without ever changing the file. The first worker is seen long before it listens: it imports
    # the gateway first.)
    while not port_accepts(gw.host, gw.port, timeout=0.05):
        assert time.monotonic() < deadline, gw.stderr
        assert gw.alive(), f"killed during start-up after {sent} SIGHUPs: {gw.proc.returncode}\n{gw.stderr}"
        os.kill(gw.pid, signal.SIGHUP)
        sent += 1
        if not changed and len(children(gw.pid)) >= 1:
            gw.write_config(routes_toml(upstream.url, ["/a", "/b"]))
            changed = True
        time.sleep(0.002)
    assert changed, "the workers were never seen starting"
    # No more signals: every worker ends up serving the new file.
    wait_until(lambda: (r := ready(gw.admin_port))[0] == 200 and r[1]["workers"] == 2, timeout=15)
    wait_until(lambda: all(http_get(gw.port, "/b")[0] == 200 for _ in range(40)), timeout=10)
    assert gw.alive()
    # Past start-up nothing stays blocked, in the supervisor or its workers, and SIGUSR1 (whose
    # default action is to terminate) is handled too.
    for pid in [gw.pid, *worker_pids(gw.admin_port)]:
        assert held(pid) == set(), proc_status(pid).get("SigBlk")
    gw.send_signal(signal.SIGUSR1)
    time.sleep(0.3)
    assert gw.alive() and http_get(gw.port, "/b")[0] == 200
    print(f"\n{sent} SIGHUPs during start-up: survived, reload applied")
    assert gw.stop() == 0


def test_sigterm_during_startup_stops_cleanly_with_0(gateway) -> None:  # noqa: F811
    gw = gateway(None, env={"GATEWAY_WORKERS": "2"}, wait=False)
    wait_held_from_the_start(gw)
    gw.send_signal(signal.SIGTERM)
    assert gw.wait(30) == 0, gw.stderr


def test_the_address_lock_of_a_killed_instance_is_taken_over_and_its_file_swept(tmp_path: Any) -> None:
    from gateway.portlock import AddressLock, AddressLocked

    d = str(tmp_path)
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from gateway.portlock import AddressLock; "
         f"AddressLock.acquire('127.0.0.1', 1, directory={d!r}); print('locked', flush=True); time.sleep(60)"],
        stdout=subprocess.PIPE, text=True, cwd=str(REPO))
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "locked\n"
        with pytest.raises(AddressLocked, match=rf"127\.0\.0\.1:1: another gateway \(pid {holder.pid}\)"):
            AddressLock.acquire("127.0.0.1", 1, directory=d)
        AddressLock.acquire("127.0.0.1", 2, directory=d).release()      # another port: free
    finally:
        holder.kill()
        holder.wait()
        if holder.stdout is not None:
            holder.stdout.close()
    assert os.listdir(d) == ["127.0.0.1:1.lock"]          # left behind by the killed holder
    with AddressLock.acquire("127.0.0.1", 3, directory=d):
        assert os.listdir(d) == ["127.0.0.1:3.lock"]      # swept; ours written with our pid
        assert open(os.path.join(d, "127.0.0.1:3.lock")).read() == f"{os.getpid()}\n"
    assert os.listdir(d) == []
