"""Supervisor: N worker processes on one port, crashed ones replaced, signals forwarded.

Spawn, not fork. Each worker is a fresh `python -m gateway _worker N` (the same interpreter, the
same environment). A fork of a process that has imported uvloop, or has a loop, threads or open
sockets, inherits state that is unsafe to reuse (the loop's epoll fd, signal wakeup fds, locks held
by other threads at fork time); a re-exec starts clean and costs ~100 ms once per worker. Each
worker binds the port itself with SO_REUSEPORT, so no listening socket is passed around, and a
replaced worker simply binds again. Shared-memory segments of later issues (node-wide counters,
limiter tables) are created by the supervisor under a name derived from its pid and opened by name
in the workers, which works the same with spawn.

The admin listener runs here, in the supervisor, not in a worker: one admin port for the node
that stays up while workers crash and are replaced, and the natural place to aggregate node totals
(metrics) from every worker later. With GATEWAY_WORKERS=1 there is no supervisor: the single worker
runs in the main process and serves the admin listener itself.

So does the node's ControlPlane (gateway/state/control.py): admin changes enter here and reach
each worker over its own state channel, a socketpair whose child end the worker inherits
(pass_fds); a replacement worker gets a fresh channel and starts from a snapshot of the current
state. With GATEWAY_REDIS_URL the control plane also holds the node's Redis connection, the
change bus to other instances and this instance's membership heartbeat.

Signals: SIGTERM/SIGINT → forwarded as SIGTERM; each worker drains (GATEWAY_DRAIN_TIMEOUT) and
exits 0; the supervisor exits 0 when all are gone (SIGKILL for any still alive well after the drain
timeout); a second SIGTERM/SIGINT during the drain is forwarded too, and the workers stop at once.
SIGQUIT → a drain like the first SIGTERM, never escalated (nginx's graceful stop). SIGHUP →
checked here once for the node (a refusal logged here), then forwarded; each worker reloads the
TOML on its own. SIGUSR1 → the supervisor's log files reopened, forwarded. All are held from the process's first
instruction until these handlers exist (gateway/signals.py), and each worker starts with them held
until its own handlers exist: one sent during start-up is applied then, never fatal.

Workers boot from the supervisor's private snapshot of the last valid config file (taken at start
and on each SIGHUP whose file is valid), so a worker replaced while the file on disk is broken
starts with the config its siblings serve instead of crash-looping.

Crash handling: a worker that exits while the supervisor is not stopping is replaced. One that dies
within CRASH_WINDOW seconds of its start counts as crash-looping and its replacement waits
0.1 s x 2^(consecutive fast crashes), capped at MAX_BACKOFF, so a broken worker cannot spin the CPU.
A crash loop can last all night (a bad deploy): the exponent is capped too, so no count overflows,
and the log gets one line per backoff step and then one summary every SUMMARY_EVERY crashes at the
cap (every 5 minutes), not a line per crash. Nothing in the crash path may stop the reaping: the
poller logs and survives any error, so SIGTERM is prompt in every state. A worker that cannot even
be spawned (EMFILE, EAGAIN, ENOMEM) counts the same: its start is retried on the same backoff
until the resource is back.
"""
from __future__ import annotations

import asyncio
import functools
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from gateway._fast.shm import SharedSegment
from gateway.admin.server import AdminServer, base_routes
from gateway.process import BOOT_CONFIG_ENV, err, run_loop
from gateway.signals import STARTUP_SIGNALS, current_mask, unblock_startup_signals
from gateway.state.client import FD_ENV
from gateway.state.layout import SUPERVISOR as SUPERVISOR_HOLDER
from gateway.state.memory import NodeMemory
from gateway.state.node import (
    SEGMENT_ENV,
    SEGMENT_PREFIX,
    describe_memory,
    make_control_plane,
    new_instance_id,
    new_segment_name,
)
from gateway.worker import SUPERVISOR_ENV

if TYPE_CHECKING:
    from gateway.config import Settings
    from gateway.state.control import ControlPlane, WorkerChannel

log = logging.getLogger("gateway.supervisor")

CRASH_WINDOW = 5.0
BASE_BACKOFF = 0.1
MAX_BACKOFF = 30.0
SUMMARY_EVERY = 10          # at the cap, one log line per this many crashes in a row (5 minutes)
POLL_INTERVAL = 0.1
KILL_GRACE = 5.0
FRESH = 3.0                 # seconds: a worker counts for /ready while its last frame is younger (SPEC 2)
START_ATTEMPTS = 3          # failed starts in a row, before any worker ever served, that end the supervisor
LAST_WORDS_WAIT = 0.5       # seconds to wait for a dead worker's channel to deliver its last frames


class Slot:
    """One worker position: its current process and its crash history."""

    __slots__ = ("index", "proc", "started", "fast_crashes", "delay", "restart_handle", "pidfd",
                 "channel", "heard", "listening", "error", "stalled", "exited")

    def __init__(self, index: int) -> None:
        self.index = index
        self.proc: subprocess.Popen[bytes] | None = None
        self.started = 0.0
        self.fast_crashes = 0               # consecutive deaths within CRASH_WINDOW of a start
        self.delay = 0.0                    # the last replacement delay (a change is logged)
        self.restart_handle: Any = None     # what call_later returned: has cancel()
        self.pidfd: int | None = None       # readable once the worker has exited (Linux >= 5.3)
        # Liveness of the current process, from the frames on its state channel:
        self.channel: WorkerChannel | None = None
        self.heard = 0.0                    # clock() of its last frame (of its start until one)
        self.listening = False              # its socket serves (the "listening" frame)
        self.error: str | None = None       # its last words ("fatal" frame), if it could not start
        self.stalled = False                # killed by the watchdog
        self.exited: float | None = None    # clock() when its exit was seen, until handled

    def serving(self, now: float) -> bool:
        return (self.proc is not None and self.proc.returncode is None and self.listening
                and now - self.heard < FRESH)


def backoff(failures: int) -> float:
    """The wait before replacing a worker after `failures` fast crashes in a row: 0 for none, then
    BASE_BACKOFF x 2^failures up to MAX_BACKOFF. The exponent is capped before it is raised, so a
    crash loop of any length never overflows (2 ** 1024 does not fit a float)."""
    if failures <= 0:
        return 0.0
    return min(BASE_BACKOFF * 2.0 ** min(failures, 32), MAX_BACKOFF)


def worker_command(index: int) -> list[str]:
    """Worker `index` is this interpreter re-executing the command (see the module docstring)."""
    return [sys.executable, "-m", "gateway", "_worker", str(index)]


class Supervisor:
    def __init__(self, settings: Settings, *, clock: Callable[[], float] = time.monotonic,
                 call_later: Callable[[float, Callable[[], None]], Any] | None = None,
                 command: Callable[[int], list[str]] = worker_command) -> None:
        """`clock` (monotonic seconds) times the workers' lives; `call_later(delay, fn)` schedules
        replacements (default: the running loop's, returning a handle with cancel()); `command`
        gives worker i's argv. A test drives a supervisor in-process through them (a crash loop of
        a thousand restarts runs in seconds with a call_later that shortens every delay)."""
        self.settings = settings
        self.clock = clock
        self._call_later = call_later
        self.command = command
        self.slots = [Slot(i) for i in range(settings.workers)]
        self._snapshot_dir: str | None = None
        self._snapshot: str | None = None
        self.stopping = False
        self.restarts = 0
        self._done: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.control: ControlPlane | None = None
        self._config_cache: tuple[str | None, Any] | None = None
        self.memory: NodeMemory | None = None
        self.served = False                 # some worker has listened: never give up from then on
        self.exit_code = 0
        self.failure: str | None = None     # why serve() returned non-zero (one line)

    # --- public ---------------------------------------------------------------------------------
    def run(self) -> int:
        """The `gateway run` of GATEWAY_WORKERS > 1: returns the exit code (0 after a stop, 1 when
        the address is taken or no worker could ever start, 2 for a bad config file)."""
        from gateway.portlock import AddressLock
        from gateway.worker import ListenError, bind_listener

        # The address first, before any worker exists: one gateway per host:port unless every one
        # of them opts in to sharing it (gateway/portlock.py).
        shared = self.settings.reuse_port
        try:
            lock = AddressLock.acquire(self.settings.host, self.settings.port, shared=shared)
        except OSError as exc:
            err(str(exc))
            return 1
        try:
            # Then probe the port once without SO_REUSEPORT: a port held by another program is
            # reported here, instead of every worker silently joining that program's SO_REUSEPORT
            # group. (When sharing on purpose, with it: only a program outside the group is refused.)
            try:
                bind_listener(self.settings.host, self.settings.port, reuse_port=shared, backlog=1).close()
            except ListenError as exc:
                err(exc.strerror or str(exc))
                return 1
            problems = self._take_snapshot()
            if problems:
                for line in problems:
                    err(line)
                return 2
            try:
                code = run_loop(self.serve())
            except OSError as exc:  # the admin listener could not bind
                err(exc.strerror or str(exc))
                self._kill_all(signal.SIGKILL)
                return 1
            if code and self.failure:
                err(self.failure)
            return code
        finally:
            lock.release()
            if self._snapshot_dir is not None:
                shutil.rmtree(self._snapshot_dir, ignore_errors=True)

    def _take_snapshot(self) -> list[str]:
        """Copy the config file, if valid, to the private snapshot new workers boot from.

        Returns the problems when it is not valid (the previous snapshot then stays). Replacement
        workers thus start with the last config that was valid, never with a broken file.
        """
        from gateway.config import ConfigurationError, loads_config

        path = self.settings.config
        if path is None:
            return []
        try:
            with open(path, "rb") as f:
                data = f.read()
            loads_config(data.decode("utf-8"), path)
        except ConfigurationError as exc:
            return list(exc.problems)
        except (OSError, UnicodeDecodeError) as exc:
            return [f"{path}: cannot read: {exc}"]
        if self._snapshot_dir is None:
            self._snapshot_dir = tempfile.mkdtemp(prefix="gateway-supervisor-")
        snap = os.path.join(self._snapshot_dir, "config.toml")
        tmp = snap + ".tmp"
        with open(tmp, "wb") as f:
            f.write(data)
        os.replace(tmp, snap)  # atomic: a worker starting now reads the old or the new, whole
        self._snapshot = snap
        self._config_cache = None   # same path, new content: _config_in_force parses it again
        return []

    def worker_pids(self) -> list[int]:
        return [s.proc.pid for s in self.slots if s.proc is not None and s.proc.poll() is None]

    async def serve(self) -> int:
        """The supervisor's life on the running loop: admin listener, control plane, workers;
        returns 0 once a stop (SIGTERM/SIGINT or stop()) has drained every worker. run() calls
        it on a fresh loop; tests may await it on theirs and drive `self.control`."""
        loop = self._loop = asyncio.get_running_loop()
        self._done = asyncio.Event()
        # Node memory before any worker: the segments of dead instances go first (their creators'
        # flocks are gone), then this start's segment under a name no start used before.
        removed = SharedSegment.remove_orphans(SEGMENT_PREFIX)
        if removed:
            log.info("removed %d shared-memory segment(s) left by dead instances: %s", len(removed), ", ".join(removed))
        self.memory = NodeMemory.create(self.settings.shm_size, new_segment_name())
        from gateway.observability.node_metrics import bind_supervisor_cells

        bind_supervisor_cells(self.memory, SUPERVISOR_HOLDER)   # its Redis errors; the connection cells
        try:
            return await self._serve(loop)
        finally:
            self.memory.unlink()
            try:
                self.memory.close()
            except BufferError:
                pass

    async def _serve(self, loop: asyncio.AbstractEventLoop) -> int:
        assert self._done is not None
        self.control = make_control_plane(loop, self.settings, new_instance_id())
        admin = self._admin = AdminServer(self._admin_routes(), self.settings)
        await admin.start(loop, self.settings.admin_host, self.settings.admin_port)
        await self.control.start()
        # Discovery's node-wide duties (active health checks, TTL expiry): once per node, here.
        from gateway.discovery.node import NodeDiscovery

        discovery = NodeDiscovery(loop, self.memory, self.control, self._config_in_force)
        self.control.on_worker_frame = self._on_worker_frame
        self.control.on_worker_closed = lambda ch: self._reap()     # a dead worker's last words are in
        # Handlers, then the signals held since the first instruction are let through: a SIGTERM
        # sent during start-up stops cleanly, a SIGHUP reloads (its snapshot is what the workers
        # spawned below boot from; one forwarded to a starting worker waits in its mask).
        mask = current_mask()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._stop_signal)
        loop.add_signal_handler(signal.SIGHUP, self._reload)
        loop.add_signal_handler(signal.SIGUSR1, self._usr1)
        loop.add_signal_handler(signal.SIGQUIT, self._quit)
        unblock_startup_signals()
        for slot in self.slots:
            self._spawn(slot)
        log.info("supervisor: %d workers on %s:%d", len(self.slots), self.settings.host, self.settings.port)
        poller = loop.create_task(self._poll())
        try:
            await self._done.wait()
        finally:
            # Held again before the handlers go: a late signal waits for the exit instead of
            # killing the process half-way through its clean-up.
            signal.pthread_sigmask(signal.SIG_SETMASK, mask)
            for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGUSR1, signal.SIGQUIT):
                loop.remove_signal_handler(sig)
            poller.cancel()
            discovery.close()
            admin.close()
            await self.control.close()
        log.info("supervisor: all workers stopped")
        return self.exit_code

    # --- internals ------------------------------------------------------------------------------

    def _spawn(self, slot: Slot) -> None:
        """Start the slot's worker; when that fails (EMFILE, EAGAIN, ENOMEM: for the channel's
        socketpair or for Popen), try again after the same backoff as a crash, for as long as it
        takes: the worker count returns to GATEWAY_WORKERS once the resource is back, and /ready
        says how many are missing meanwhile."""
        slot.restart_handle = None
        if self.stopping:
            return
        try:
            proc = self._start_process(slot)
        except Exception as exc:  # noqa: BLE001 - whatever it was, the slot must not be lost
            slot.fast_crashes += 1
            self._failed_start(slot, f"worker {slot.index} could not be spawned: {exc}")
            return
        slot.proc = proc
        slot.started = self.clock()
        self._watch_exit(slot)
        # In a crash loop only the first start of the streak is worth a line.
        log.log(logging.INFO if slot.fast_crashes <= 1 else logging.DEBUG,
                "worker %d started (pid %d)", slot.index, proc.pid)

    def _start_process(self, slot: Slot) -> subprocess.Popen[bytes]:
        assert self.control is not None and self.memory is not None
        env = dict(os.environ, GATEWAY_WORKER_INDEX=str(slot.index))
        env[SEGMENT_ENV] = str(self.memory.name)
        if self._snapshot is not None:
            env[BOOT_CONFIG_ENV] = self._snapshot
        env[SUPERVISOR_ENV] = str(os.getpid())
        channel = self.control.attach_worker(slot.index)
        ch = self.control.workers[slot.index]
        env[FD_ENV] = str(channel.fileno())
        # The worker starts with the start-up signals blocked (a blocked mask survives fork and
        # exec): a SIGHUP or SIGTERM forwarded while it is still importing waits until its loop
        # handles it instead of killing it (gateway/signals.py). Blocked here, around Popen, rather
        # than in a preexec_fn: without one Popen uses vfork+exec, ~4x cheaper than the full fork
        # of this process a preexec_fn needs (2.3 ms against 8.8 ms measured); the worker sets its
        # parent-death signal itself (gateway.worker.follow_supervisor).
        previous = signal.pthread_sigmask(signal.SIG_BLOCK, STARTUP_SIGNALS)
        try:
            proc = subprocess.Popen(
                self.command(slot.index),
                env=env,
                stdin=subprocess.DEVNULL,
                pass_fds=(channel.fileno(),),
            )
        except BaseException:
            self.control.detach_worker(slot.index)
            raise
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, previous)
            channel.close()  # the worker has its copy; ours would keep the channel open after it dies
        slot.channel = ch
        slot.heard, slot.listening, slot.error, slot.stalled = self.clock(), False, None, False
        return proc

    def _watch_exit(self, slot: Slot) -> None:
        """Reap the worker the moment it exits: a pidfd becomes readable then. Without one (an
        old kernel, or no fd to spare) the 0.1 s poll reaps it."""
        assert self._loop is not None and slot.proc is not None
        try:
            fd = os.pidfd_open(slot.proc.pid)
        except (OSError, AttributeError):
            return
        slot.pidfd = fd
        self._loop.add_reader(fd, self._reap)

    def _unwatch_exit(self, slot: Slot) -> None:
        fd, slot.pidfd = slot.pidfd, None
        if fd is not None:
            if self._loop is not None:
                self._loop.remove_reader(fd)
            os.close(fd)

    def _schedule(self, delay: float, fn: Callable[[], None]) -> Any:
        if self._call_later is not None:
            return self._call_later(delay, fn)
        assert self._loop is not None
        return self._loop.call_later(delay, fn)

    async def _poll(self) -> None:
        """Reap exited workers that no pidfd reported. waitpid on each Popen (rather than SIGCHLD)
        keeps the reaping in one place with no signal-handler races against Popen's bookkeeping.
        An error is logged and the loop goes on: a poller that died would leave crashed workers
        unreplaced and a stop waiting for ever."""
        while True:
            await asyncio.sleep(POLL_INTERVAL)
            try:
                self._reap()
                self._watchdog()
            except Exception:  # noqa: BLE001 - see the docstring
                log.exception("supervisor: reaping workers failed")

    # --- liveness ---------------------------------------------------------------------------------
    def _on_worker_frame(self, ch: WorkerChannel, frame: dict[str, Any]) -> None:
        """Every frame a worker sends on its state channel (ControlPlane.on_worker_frame)."""
        slot = self.slots[ch.index] if 0 <= ch.index < len(self.slots) else None
        if slot is None or slot.channel is not ch:
            return                          # a replaced worker's last bytes
        slot.heard = self.clock()
        t = frame.get("t")
        if t == "listening" and not slot.listening:
            slot.listening = True
            self.served = True
            if slot.fast_crashes > 1:
                log.info("worker %d serving again after %d failed starts", slot.index, slot.fast_crashes)
        elif t == "fatal":
            slot.error = str(frame.get("error"))[:1000]
        elif t == "reload_failed":
            from gateway.observability.node_metrics import RELOADS

            RELOADS.worker_failed(slot.index, str(frame.get("error"))[:1000])

    def _watchdog(self) -> None:
        """SIGKILL every worker silent for longer than GATEWAY_WORKER_WATCHDOG (its loop no longer
        turns: stopped, deadlocked, spinning in a callback); the reaper then replaces it. Also while
        stopping: a stalled worker would otherwise hold the stop until the drain backstop."""
        limit = float(self.settings.worker_watchdog)
        now = self.clock()
        for slot in self.slots:
            proc = slot.proc
            if proc is None or slot.stalled or now - slot.heard <= limit or proc.poll() is not None:
                continue
            slot.stalled = True
            silent = now - slot.heard
            log.error("worker %d (pid %d) silent for %.1fs (GATEWAY_WORKER_WATCHDOG=%gs)%s: killing it",
                      slot.index, proc.pid, silent, limit, "" if slot.listening else " before it listened")
            proc.send_signal(signal.SIGKILL)   # Popen checks it was not reaped: never a reused pid
            if self.control is not None:
                self.control.hub.emit("worker_stalled", details={
                    "worker": slot.index, "pid": proc.pid, "silent": round(silent, 1), "listening": slot.listening})

    def _reap(self) -> None:
        assert self._loop is not None and self._done is not None
        now = self.clock()
        for slot in self.slots:
            proc = slot.proc
            if proc is None or proc.poll() is None:
                continue
            if slot.exited is None:
                slot.exited = now
                self._unwatch_exit(slot)    # seen: a pidfd stays readable, it would fire every turn
            ch = slot.channel
            if ch is not None and not ch.proto.closed and now - slot.exited < LAST_WORDS_WAIT:
                # Its last frames (a "fatal" one says why it could not start) may still be unread:
                # the channel's EOF follows them and calls _reap again (on_worker_closed).
                continue
            slot.exited = None
            slot.proc = None
            slot.channel = None
            self._unwatch_exit(slot)
            if self.control is not None:
                self.control.detach_worker(slot.index)
            if self.memory is not None:
                # Its objects are released (freed after the quarantine unless a sibling holds them);
                # the replacement places what it uses again, by name, and finds the same bytes.
                self.memory.drop_holder(slot.index)
                from gateway.observability.node_metrics import clear_worker_slot

                clear_worker_slot(self.memory, slot.index, SUPERVISOR_HOLDER)   # its connections died with it
            code = proc.returncode
            how = f"killed by signal {-code}" if code < 0 else f"exited with code {code}"
            if slot.stalled:
                how += " (watchdog)"
            if self.stopping:
                log.info("worker %d (pid %d) %s", slot.index, proc.pid, how)
                continue
            lived = now - slot.started
            slot.fast_crashes = slot.fast_crashes + 1 if lived < CRASH_WINDOW or not slot.listening else 0
            self.restarts += 1
            what = f"worker {slot.index} (pid {proc.pid}) {how}"
            self._failed_start(slot, f"{what}: {slot.error}" if slot.error else what)
        if self.stopping and all(s.proc is None for s in self.slots):
            self._done.set()

    def _failed_start(self, slot: Slot, what: str) -> None:
        """A worker died or could not be spawned: replace it after its backoff; or, when no worker
        has ever served and this slot failed START_ATTEMPTS times in a row, give up (exit 1 with the
        reason), as nginx does when it cannot bind: a node that never served is misconfigured, and a
        crash loop would hide that from whoever started it. Once any worker served, never."""
        if not self.served and slot.fast_crashes >= START_ATTEMPTS:
            if self.failure is None:
                self.failure = f"no worker could start ({slot.fast_crashes} attempts): {what}"
                self.exit_code = 1
                log.error("supervisor: %s; giving up", self.failure)
                assert self._loop is not None
                self._loop.call_soon(self.stop)
            return
        self._replace_later(slot, what)

    def _replace_later(self, slot: Slot, what: str) -> None:
        """Schedule the slot's next start after its backoff; log once per step, not per crash."""
        n = slot.fast_crashes
        delay = backoff(n)
        if n <= 1 or delay != slot.delay:
            streak = f" ({n} failed starts in a row)" if n > 1 else ""
            log.error("%s; replacing it in %.1fs%s", what, delay, streak)
        elif n % SUMMARY_EVERY == 0:
            log.error("worker %d: %d failed starts in a row (last: %s); still replacing it every %.0fs",
                      slot.index, n, what, delay)
        else:
            log.debug("%s; replacing it in %.1fs", what, delay)
        slot.delay = delay
        slot.restart_handle = self._schedule(delay, functools.partial(self._spawn, slot))

    def _forward(self, sig: int) -> None:
        for pid in self.worker_pids():
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        if sig == signal.SIGHUP:
            log.info("reload: SIGHUP forwarded to %d workers", len(self.worker_pids()))

    def _usr1(self) -> None:
        # nginx's "reopen the log files": forwarded, each worker reopens its access and audit log
        # files, and so does the supervisor (it writes audit records: admin changes); SIGUSR1 must
        # never kill the node.
        from gateway.security.audit import current as current_audit

        current_audit().reopen()
        self._forward(signal.SIGUSR1)
        log.info("SIGUSR1: log files reopened, forwarded to %d workers", len(self.worker_pids()))

    def _reload(self) -> None:
        # Snapshot first, so a worker replaced from now on boots with the new config; each worker
        # then reloads from GATEWAY_CONFIG. The file is checked here once for the node: a refusal
        # is logged here (ERROR, every reason) and counted, and the workers, which find the same
        # problems, say so only at debug level.
        from gateway.observability.node_metrics import RELOADS
        from gateway.security.audit import current as current_audit
        from gateway.worker import log_refused_reload

        current_audit().reopen()     # SIGHUP is logrotate's postrotate signal too
        problems = self._take_snapshot()
        if getattr(self, "_admin", None) is not None:
            self._admin.reload_tls()     # the admin certificate (GATEWAY_ADMIN_TLS_CERT), served here
        if problems:
            log_refused_reload(self.settings.config, problems)
            log.info("reload: replacement workers keep booting from the last valid config")
            RELOADS.record(False, problems)
        else:
            self._config_cache = None    # the snapshot's path stays the same: parse it again
            RELOADS.record(True)
        self._forward(signal.SIGHUP)

    def _quit(self) -> None:
        # SIGQUIT: nginx's graceful stop. A drain, never escalated: a terminal's Ctrl-\ reaches
        # every process of the group, and the workers treat their own SIGQUIT the same way.
        if not self.stopping:
            self.stop()

    def _stop_signal(self) -> None:
        """SIGTERM/SIGINT: the first drains; a second one during the drain stops at once (forwarded
        to the workers as a second SIGTERM: they close their connections and exit)."""
        if not self.stopping:
            self.stop()
            return
        log.warning("supervisor: second stop signal: workers stop now")
        self._forward(signal.SIGTERM)

    def stop(self) -> None:
        """Drain every worker, then let serve() return (what SIGTERM/SIGINT do)."""
        assert self._loop is not None
        if self.stopping:
            return
        self.stopping = True
        for slot in self.slots:
            if slot.restart_handle is not None:
                slot.restart_handle.cancel()
                slot.restart_handle = None
        log.info("supervisor: stopping, draining %d workers", len(self.worker_pids()))
        self._forward(signal.SIGTERM)
        self._forward(signal.SIGCONT)   # a SIGSTOPped worker resumes, sees the SIGTERM and drains
        # Workers stop on their own within the drain timeout; this is only the backstop.
        self._loop.call_later(float(self.settings.drain_timeout) + KILL_GRACE, self._kill_all, signal.SIGKILL)
        self._reap()

    def _kill_all(self, sig: int) -> None:
        pids = self.worker_pids()
        if pids and sig == signal.SIGKILL:
            log.warning("supervisor: %d workers still alive after the drain timeout: killing", len(pids))
        for pid in pids:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass

    def readiness(self) -> tuple[bool, dict[str, Any]]:
        """GET /ready. `workers` counts the serving ones: listening, and heard from in the last
        FRESH seconds. Ready while at least one serves and none is stalled (alive and listening,
        but silent): a stalled worker's socket stays in the SO_REUSEPORT group and takes its share
        of new connections without accepting them, until the watchdog replaces it. A worker that
        is missing otherwise (crashed, starting, not spawned for want of a resource) only lowers
        the count: the kernel sends its share to the others."""
        from gateway.admin.health import readiness

        now = self.clock()
        serving = sum(1 for s in self.slots if s.serving(now))
        stalled = sum(1 for s in self.slots if s.proc is not None and s.listening and not s.serving(now))
        from gateway.observability.node_metrics import RELOADS

        return readiness(draining=self.stopping, serving=serving, expected=len(self.slots), stalled=stalled,
                         config=self._config_in_force(),
                         redis=self.control.status["redis"] if self.control is not None else "off",
                         last_reload=RELOADS.last)

    def _admin_routes(self) -> Any:
        from gateway.admin.health import Liveness

        liveness = Liveness("supervisor")

        def health() -> dict[str, Any]:
            now = self.clock()
            slots = [{"worker": s.index, "pid": s.proc.pid if s.proc is not None else None,
                      "listening": s.listening, "silent": round(now - s.heard, 1) if s.proc is not None else None,
                      "fast_crashes": s.fast_crashes} for s in self.slots]
            state: dict[str, Any] = {}
            if self.control is not None:
                state = self.control.describe()
                if self.memory is not None:
                    state["memory"] = describe_memory(self.memory)
            return liveness.body(workers=self.worker_pids(), slots=slots, restarts=self.restarts, state=state)

        from gateway.admin.features import AdminContext, install_features
        from gateway.state.node import NodeState

        assert self.control is not None
        state = NodeState(self.control.view, memory=self.memory, control=self.control,
                          instance=self.control.hub.instance)
        return install_features(base_routes(self.readiness, health),
                                AdminContext(self.settings, self._config_in_force, state))

    def _config_in_force(self) -> Any:
        """The GatewayConfig the workers boot from (the last valid snapshot), parsed once per
        snapshot: the supervisor serves no traffic, but feature admin routes read the config."""
        from gateway.config import GatewayConfig, loads_config

        snap = self._snapshot
        cached = self._config_cache
        if cached is None or cached[0] != snap:
            # loads_config, not load_config: the command has already warned about this file once.
            if snap is None:
                config = GatewayConfig()
            else:
                with open(snap, encoding="utf-8") as f:
                    config = loads_config(f.read(), snap)
            cached = self._config_cache = (snap, config)
        return cached[1]
