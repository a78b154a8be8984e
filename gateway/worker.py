"""Worker: one process's event loop, data-plane listener, connection cap, drain and reload.

A Worker owns the listening socket and the set of live downstream connections. The downstream
protocol (gateway/http/downstream.pyx) reads `worker.runtime` once per request, so a reload is a
single attribute swap: requests already routed keep their Route (and its service, targets and
pools) and finish on the config they started with; the next request on any connection, including
established keep-alive ones, sees the new config. Nothing is closed by a reload.

Connection cap. asyncio has no "pause accepting", so the worker keeps the bound, listening socket
for its whole life and serves it through a dup()'d file descriptor. At the cap it closes the
asyncio Server: only the dup is closed, the socket stays in LISTEN state and the kernel keeps
queueing new connections in its backlog (they wait; they are not refused). Below the cap again, a
new Server is created on a fresh dup and the queued connections are accepted. The cap is counted in
connection_made, which uvloop calls one loop iteration after accept(); a burst accepted in the same
iteration can therefore overshoot the cap by the size of that burst, never more.
"""
from __future__ import annotations

import asyncio
import errno
import logging
import os
import resource
import signal
import socket
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from gateway.runtime_core import WorkerCore

if TYPE_CHECKING:
    from gateway.config import Settings
    from gateway.runtime import Runtime
    from gateway.state.node import NodeState
    from gateway.tls import ServerTLS

log = logging.getLogger("gateway.worker")

DEFAULT_BACKLOG = 4096
# Internal, set by the supervisor for each worker: its pid (see follow_supervisor).
SUPERVISOR_ENV = "_GATEWAY_SUPERVISOR_PID"
PR_SET_PDEATHSIG = 1


def follow_supervisor(environ: Any = os.environ) -> bool:
    """In a supervised worker, first thing: get SIGTERM when the supervisor dies (even by SIGKILL),
    so that a killed supervisor never leaves orphans holding the port. False when the supervisor
    is already gone (then the worker must not start).

    The supervisor spawns without a preexec_fn (vfork+exec, see Supervisor._spawn), so the
    parent-death signal is set here, after exec; a supervisor that died before this line is caught
    by the parent check that follows (the worker was reparented by then). The SIGTERM is blocked
    until the loop handles it (gateway/signals.py), so it starts a normal drain."""
    raw = environ.get(SUPERVISOR_ENV)
    if not raw:
        return True
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):  # not Linux: orphans are then possible, as before
        return True
    return str(os.getppid()) == raw


class ListenError(OSError):
    """The data-plane address cannot be bound; the message is one line naming GATEWAY_PORT/HOST."""


def somaxconn() -> int:
    """The kernel's accept-queue cap: a larger listen() backlog would be silently truncated."""
    try:
        with open("/proc/sys/net/core/somaxconn") as f:
            return max(int(f.read().strip()), 128)
    except (OSError, ValueError):
        return DEFAULT_BACKLOG


def raise_nofile_limit() -> int:
    """Raise RLIMIT_NOFILE's soft limit to the hard limit (10k connections need >10k fds)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else 1 << 20
    if soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError) as exc:  # a container may forbid it: run with what we have
            log.warning("could not raise RLIMIT_NOFILE from %d to %d: %s", soft, target, exc)
    return soft


def bind_listener(host: str, port: int, *, reuse_port: bool, backlog: int | None = None) -> socket.socket:
    """A bound, listening, non-blocking TCP socket.

    reuse_port=True (supervised workers) sets SO_REUSEPORT so N processes bind the same port and
    the kernel spreads connections over their accept queues. A lone process does not set it: then
    a port already served by another program is reported instead of silently shared with it.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.bind((host, port))
        sock.listen(backlog or somaxconn())
        sock.setblocking(False)
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            raise ListenError(
                exc.errno,
                f"cannot listen on {host}:{port}: address already in use "
                f"(set GATEWAY_PORT to a free port, or GATEWAY_HOST)",
            ) from None
        raise ListenError(
            exc.errno or 0, f"cannot listen on {host}:{port}: {exc.strerror or exc} (check GATEWAY_HOST/GATEWAY_PORT)"
        ) from None
    return sock


class Worker(WorkerCore):
    """One process's data plane: listener, live connections, drain, reload (see module doc).

    runtime and draining are WorkerCore's C fields (the protocols read them per request)."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        settings: Settings,
        runtime: Runtime,
        *,
        config_path: str | None,
        protocol_factory: Callable[[Worker], asyncio.Protocol] | None = None,
        state: NodeState | None = None,
        tls: ServerTLS | None = None,
    ) -> None:
        self.loop = loop
        self.tls = tls              # GATEWAY_TLS_CERT/_KEY: HTTPS; the context in force (reload_tls)
        self.settings = settings
        self.runtime = runtime
        self.state = state          # the node's shared state as this process sees it (gateway/state/)
        self.config_path = config_path
        self.draining = False
        self.connections: set[Any] = set()
        self.max_connections: int = settings.max_connections
        self.reloads = 0
        # Whether this process speaks for the node about reloads (logs a refusal at ERROR, counts
        # gateway_config_reloads_total, /ready's last_reload): the lone process does; a supervised
        # worker does not, its supervisor checked the same file once for the whole node.
        self.node_reloads = state is None or state.control is not None
        self._swap_error: str | None = None
        if protocol_factory is None:
            # Imported here, not at module import: `gateway check` never needs the data plane.
            from gateway.http.downstream import DownstreamProtocol

            protocol_factory = DownstreamProtocol
        self._protocol_factory = protocol_factory
        self._sock: socket.socket | None = None
        self._server: asyncio.AbstractServer | None = None
        self._backlog = somaxconn()
        self._resuming = False
        self._idle = asyncio.Event()
        self._stopped = asyncio.Event()
        self._stop_task: asyncio.Task[None] | None = None
        self._limits_pending = False
        # gateway_connections: this worker's cell in node memory (None for a bare runtime)
        from gateway.observability.node_metrics import connection_gauge

        self._gauge = connection_gauge()
        if state is not None:
            # Live limits (SPEC §8): a change to limits/... rebuilds the runtime from the config in
            # force plus the new overrides (gateway/filters/limits_live.py), off the hot path.
            state.view.subscribe("limits/", self._limits_changed, replay=False)

    # --- live limits ------------------------------------------------------------------------------
    def _limits_changed(self, key: str, value: Any) -> None:
        # Coalesced: a burst of changes (a snapshot after a reconnect) costs one rebuild.
        if not self._limits_pending:
            self._limits_pending = True
            self.loop.call_soon(self._apply_limits)

    def _apply_limits(self) -> None:
        self._limits_pending = False
        if self.draining:
            return
        if self._swap(self.runtime.config, "live limits change"):
            log.info("live limits applied (%d routes)", len(self.runtime.config.routes))

    def _swap(self, config: Any, why: str) -> bool:
        """Build a runtime for `config` (plus the state's live overrides) and swap it in; on any
        error keep the old one."""
        from gateway.runtime import build_runtime

        old = self.runtime
        try:
            new = build_runtime(config, self.settings, self.loop, previous=old, state=self.state)
        except Exception as exc:  # noqa: BLE001 - SharedMemoryFull included: it names GATEWAY_SHM_SIZE
            log.error("%s refused, keeping the previous config: %s", why, exc)
            self._swap_error = str(exc)
            return False
        self.runtime = new
        if self.state is not None:
            # Shared objects the new config no longer names: released now, their bytes reused only
            # after node memory's quarantine (requests in flight on `old` may still write them).
            self.state.release_unplaced(new.placed)
        try:
            new.close_unused(old)
        except Exception:  # noqa: BLE001 - the swap is done; a failed close only leaks idle sockets
            log.exception("closing pools of removed upstreams failed")
        return True

    # --- listener -------------------------------------------------------------------------------
    async def start(self, sock: socket.socket) -> None:
        """Serve `sock` (bound and listening); the worker owns it from now on."""
        self._sock = sock
        self._backlog = somaxconn()
        await self._serve()

    @property
    def accepting(self) -> bool:
        return self._server is not None

    async def _serve(self) -> None:
        assert self._sock is not None
        dup = socket.socket(fileno=os.dup(self._sock.fileno()))
        dup.setblocking(False)
        # backlog is passed again: create_server calls listen() on the socket, and the default
        # (100) would shrink the accept queue shared with the bound socket.
        if self.tls is None:
            self._server = await self.loop.create_server(self._make_protocol, sock=dup, backlog=self._backlog)
            return
        # HTTPS: the protocol sees the connection only once the handshake is done, so the handshake
        # has its own bound, GATEWAY_HEADER_TIMEOUT (a peer that trickles or stalls its ClientHello
        # holds an fd that long, as a stalled head would); the close_notify exchange at the end is
        # bounded the same way. The context is the one in force now (reload_tls swaps servers).
        self._server = await self.loop.create_server(
            self._make_protocol, sock=dup, backlog=self._backlog, ssl=self.tls.context,
            ssl_handshake_timeout=self.settings.header_timeout,
            ssl_shutdown_timeout=self.settings.header_timeout,
        )

    def reload_tls(self) -> bool | None:
        """SIGHUP: load the certificate files again; None without TLS, False when refused (logged,
        the previous certificate stays).

        uvloop binds a server to one SSLContext, so a new certificate means a new server on a fresh
        dup of the same listening socket: it is started first and the old one closed after, so
        there is no moment without an accepting server. Closing a server closes only its fd, never
        the connections it accepted: they keep their context and finish undisturbed."""
        if self.tls is None:
            return None
        if not self.tls.reload():
            return False
        if self._server is not None and not self.draining:
            self.loop.create_task(self._replace_server())
        else:   # paused at the connection cap: the next _serve() picks the new context up
            self.tls.reloaded("data-plane")
        return True

    async def _replace_server(self) -> None:
        old = self._server
        assert self.tls is not None
        if self.draining or self._sock is None:
            return      # a drain came first: nothing will accept again
        if old is None:     # paused at the connection cap meanwhile: the resume takes the new context
            self.tls.reloaded("data-plane")
            return
        try:
            await self._serve()
        except Exception:  # noqa: BLE001 - keep serving with the previous server
            log.exception("could not start a listener with the reloaded certificate")
            self._server = old
            return
        old.close()
        self.tls.reloaded("data-plane")   # said once the old server no longer accepts
        if self.draining or len(self.connections) >= self.max_connections:
            self._pause_accepting()   # either happened while the new server was being created

    def _make_protocol(self) -> asyncio.Protocol:
        return self._protocol_factory(self)

    def _pause_accepting(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            # Closes only the dup'd fd: the bound socket keeps listening, new connections queue.
            server.close()
            log.debug("connection cap %d reached: accepting paused", self.max_connections)

    def _resume_accepting(self) -> None:
        if self._resuming or self._server is not None or self.draining or self._sock is None:
            return
        self._resuming = True

        async def resume() -> None:
            try:
                if not self.draining and self._server is None and len(self.connections) < self.max_connections:
                    await self._serve()
                    log.debug("below the connection cap: accepting resumed")
            except Exception:  # noqa: BLE001 - never lose the loop over a failed resume
                log.exception("could not resume accepting")
            finally:
                self._resuming = False

        self.loop.create_task(resume())

    # --- called by DownstreamProtocol (keep O(1): they run per connection) -----------------------
    def connection_made(self, proto: Any) -> None:
        self.connections.add(proto)
        if self._gauge is not None:
            self._gauge.set(len(self.connections))
        if len(self.connections) >= self.max_connections:
            self._pause_accepting()
        if self.draining:
            # Accepted just before the listener closed: it gets the same treatment as the others.
            proto.shutdown()

    def connection_lost(self, proto: Any) -> None:
        self.connections.discard(proto)
        if self._gauge is not None:
            self._gauge.set(len(self.connections))
        if not self.connections:
            self._idle.set()
        if self._server is None and len(self.connections) < self.max_connections:
            self._resume_accepting()

    # --- reload (SIGHUP) -------------------------------------------------------------------------
    def reload(self) -> bool:
        """Load the TOML again and swap the runtime; on any error keep the old one.

        Pools of upstreams the new config no longer names are handed to Runtime.close_unused():
        UpstreamPool.close() closes idle connections now and makes busy ones close when their
        exchange ends instead of returning to the pool, so in-flight requests on removed
        upstreams complete and nothing lingers (no timer or request tracking needed).
        """
        from gateway.config import ConfigurationError, load_config
        from gateway.observability.node_metrics import RELOADS

        path = self.config_path
        try:
            config = load_config(path)
        except Exception as exc:  # noqa: BLE001 - an unreadable file must not kill the worker
            problems = list(exc.problems) if isinstance(exc, ConfigurationError) else [f"{path}: {exc}"]
            if self.node_reloads:
                log_refused_reload(path, problems)
                RELOADS.record(False, problems)
            else:
                # The supervisor checked the same file and logged why, once for the node.
                log.debug("reload refused, keeping the previous config: %s", "; ".join(problems))
            return False
        if not self._swap(config, "reload"):
            error = self._swap_error or "the runtime could not be built"
            if self.node_reloads:
                RELOADS.record(False, [error])
            elif self.state is not None and self.state.client is not None:
                self.state.client.reload_failed(error)   # the supervisor's last_reload says so
            return False
        self.reloads += 1
        if self.node_reloads:
            RELOADS.record(True)
        log.info("reloaded %s: %d routes", path or "(no config file)", len(getattr(config, "routes", ())))
        return True

    # --- drain (SIGTERM/SIGINT) ------------------------------------------------------------------
    def stop(self) -> None:
        """Begin draining (idempotent); `wait_stopped()` returns when it is over."""
        if self._stop_task is None:
            self._stop_task = self.loop.create_task(self.drain())

    async def drain(self) -> None:
        """Stop accepting, let in-flight responses finish, close idle connections, then stop.

        The bound socket is closed too, so new connections are refused at once (with SO_REUSEPORT
        the kernel sends them to the other workers' sockets while those still listen; connections
        already queued in this socket's backlog but never accepted are reset by the kernel, which
        is why the supervisor drains all workers together rather than one at a time).
        """
        self.draining = True
        timeout = float(self.settings.drain_timeout)
        live = len(self.connections)
        log.info("draining: %d connections, up to %.1fs", live, timeout)
        self._pause_accepting()
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        for proto in list(self.connections):
            try:
                proto.shutdown()
            except Exception:  # noqa: BLE001 - one broken connection must not stop the drain
                log.exception("shutdown of a connection failed")
        if self.connections:
            self._idle.clear()
            try:
                await asyncio.wait_for(self._idle.wait(), timeout)
            except TimeoutError:
                log.warning("drain timeout: closing %d connections", len(self.connections))
                for proto in list(self.connections):
                    transport = getattr(proto, "transport", None)
                    if transport is not None:
                        transport.abort()
        try:
            self.runtime.close()  # every upstream pool: idle upstream connections close now
        except Exception:  # noqa: BLE001
            log.exception("closing the upstream pools failed")
        log.info("drained")
        self._stopped.set()

    def stop_now(self) -> None:
        """A second stop signal during the drain: close every connection now (in-flight responses
        are cut), then the drain ends as soon as they are gone."""
        self.stop()
        log.warning("second stop signal: closing %d connections now", len(self.connections))
        for proto in list(self.connections):
            transport = getattr(proto, "transport", None)
            if transport is not None:
                transport.abort()

    async def wait_stopped(self) -> None:
        await self._stopped.wait()


def log_refused_reload(path: str | None, problems: list[str]) -> None:
    """The node's one ERROR line for a refused reload: the file and every reason."""
    where = path or "(no config file)"
    prefix = f"{where}: "
    reasons = "; ".join(p.removeprefix(prefix) for p in problems) or "no reason given"
    log.error("reload refused, keeping the previous config: %s: %d problem%s: %s", where, len(problems),
              "" if len(problems) == 1 else "s", reasons)


def _server_tls(settings: Settings) -> ServerTLS | None:
    """The data plane's certificate, loaded again here (settings validation loaded it already, but a
    replacement worker starts later, and the files may have changed since): a failure is one line
    naming the variable, as a bind error is."""
    from gateway.tls import ServerTLS, TLSError

    try:
        return ServerTLS.data_plane(settings)
    except TLSError as exc:
        raise ListenError(0, f"GATEWAY_TLS_CERT: {exc}") from None


class Heartbeat:
    """A supervised worker's beat: on every tick of its loop's ticker (0.5 s, gateway/http/flow.pyx)
    one small frame on its state channel. The supervisor counts the worker as serving only while
    beats arrive, and kills it after GATEWAY_WORKER_WATCHDOG seconds without one: a frame sent from
    the loop proves that the loop turns, which a live pid does not."""

    __slots__ = ("worker", "client", "gauge", "upstream_idle")

    def __init__(self, worker: Worker, client: Any) -> None:
        from gateway.observability.node_metrics import connection_gauge, upstream_idle

        self.worker = worker
        self.client = client
        self.gauge = connection_gauge()     # gateway_connections{side="upstream"}: stored on each beat
        self.upstream_idle = upstream_idle

    def start(self) -> None:
        from gateway.http.flow import ticker_for

        self.client.listening()
        ticker_for(self.worker.loop).add(self)   # a permanent member: the ticker never idles

    def on_tick(self, now: float) -> None:
        self.client.beat(len(self.worker.connections))
        if self.gauge is not None:
            self.gauge.set_upstream_idle(self.upstream_idle(self.worker.runtime))


def mtime(path: str) -> int | None:
    try:
        return os.stat(path).st_mtime_ns
    except OSError:
        return None


# --- one worker process ----------------------------------------------------------------------------
def reopen_log_files() -> None:
    """nginx's "reopen the log files" (SIGUSR1, and SIGHUP too): the access log and the audit log,
    when they are files, are opened again under their configured names (logrotate's rename, then
    signal). The process's own log (the error log) goes to stderr, which is never reopened."""
    from gateway.observability.access import reopen_process_log
    from gateway.security.audit import current as current_audit

    reopen_process_log()
    current_audit().reopen()


def _usr1() -> None:
    # SIGUSR1 (default action: terminate) never stops the process.
    reopen_log_files()


def _hup(worker: Worker, admin_server: Any = None) -> None:
    # SIGHUP: reload the TOML, and reopen the log files (logrotate's postrotate signal).
    reopen_log_files()
    worker.reload()
    worker.reload_tls()     # a renewed certificate (GATEWAY_TLS_CERT), for new connections
    if admin_server is not None:
        admin_server.reload_tls()


class StopSignals:
    """SIGTERM/SIGINT in a worker: the first drains, a second stops at once (its connections are
    closed, what is in flight is cut). A supervised worker counts only SIGTERM: a Ctrl-C in a
    terminal sends SIGINT to the whole process group and the supervisor forwards it as a SIGTERM
    too, so counting both would turn one Ctrl-C into an immediate stop."""

    __slots__ = ("worker", "supervised", "seen")

    def __init__(self, worker: Worker, supervised: bool) -> None:
        self.worker = worker
        self.supervised = supervised
        self.seen = 0

    def __call__(self, sig: int) -> None:
        if self.supervised and sig == signal.SIGINT:
            self.worker.stop()
            return
        self.seen += 1
        if self.seen == 1:
            self.worker.stop()
        else:
            self.worker.stop_now()


def worker_admin_routes(worker: Worker) -> Any:
    """/health and /ready of a single-process gateway (admin served by the worker itself)."""
    from gateway.admin.health import Liveness, readiness
    from gateway.admin.server import base_routes

    control = worker.state.control if worker.state is not None else None
    liveness = Liveness("standalone")

    def ready() -> tuple[bool, dict[str, Any]]:
        # Draining: tell load balancers to stop sending before the listener goes away. A configured
        # Redis that is unreachable also makes the node not ready (SPEC §8). A node of one worker:
        # it serves while it is not draining.
        serving = 0 if worker.draining else 1
        from gateway.observability.node_metrics import RELOADS

        return readiness(draining=worker.draining, serving=serving, expected=1, stalled=0,
                         config=worker.runtime.config,
                         redis=control.status["redis"] if control is not None else "off",
                         last_reload=RELOADS.last)

    def health() -> dict[str, Any]:
        pid = os.getpid()
        slot = {"worker": 0, "pid": pid, "listening": not worker.draining, "silent": 0.0, "fast_crashes": 0}
        return liveness.body(workers=[pid], slots=[slot], restarts=0,
                             state=worker.state.describe() if worker.state is not None else {})

    from gateway.admin.features import AdminContext, install_features

    routes = base_routes(ready, health)
    if worker.state is None:
        return routes
    return install_features(routes, AdminContext(worker.settings, lambda: worker.runtime.config, worker.state,
                                                 lambda: worker.runtime))


async def run_worker(
    settings: Settings,
    config: Any,
    *,
    config_path: str | None,
    admin: bool,
    reuse_port: bool,
    on_listening: Callable[[Worker], None] | None = None,
    reload_if: Callable[[], bool] | None = None,
) -> int:
    """Serve until SIGTERM/SIGINT has drained the worker; return the exit code (0).

    Raises ListenError (one line naming GATEWAY_PORT) when the address cannot be bound.
    """
    from gateway.allocator import Allocator
    from gateway.runtime import build_runtime
    from gateway.security.audit import configure as configure_audit
    from gateway.signals import current_mask, unblock_startup_signals
    from gateway.state.node import NodeState

    loop = asyncio.get_running_loop()
    # Large bodies without a page fault per read (gateway/allocator.py): before any connection.
    allocator = Allocator(loop)
    allocator.start()
    mask = current_mask()       # the start-up signals held since the first instruction (a process)
    # The audit destination, whether or not a route has auth: the data plane audits the malformed
    # requests it refuses (gateway/observability/errorlog.py).
    configure_audit(settings.audit_log)
    # The state first: features built with the runtime subscribe to it. A lone process (admin here)
    # is its own control plane; a supervised worker gets its changes over the supervisor's channel.
    state = await (NodeState.standalone(loop, settings) if admin else NodeState.for_worker(loop, settings))
    try:
        runtime = build_runtime(config, settings, loop, previous=None, state=state)
    except BaseException:
        await state.close()
        raise
    try:
        tls = _server_tls(settings)
        sock = bind_listener(settings.host, settings.port, reuse_port=reuse_port)
    except BaseException:
        await state.close()
        raise
    worker = Worker(loop, settings, runtime, config_path=config_path, state=state, tls=tls)
    await worker.start(sock)
    admin_server = None
    if admin:
        from gateway.admin.server import AdminServer

        admin_server = AdminServer(worker_admin_routes(worker), settings)
        await admin_server.start(loop, settings.admin_host, settings.admin_port)
    on_stop = StopSignals(worker, supervised=state.client is not None)
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_stop, sig)
    loop.add_signal_handler(signal.SIGHUP, _hup, worker, admin_server)
    loop.add_signal_handler(signal.SIGUSR1, _usr1)
    loop.add_signal_handler(signal.SIGQUIT, worker.stop)     # nginx's graceful stop: a drain, never escalated
    # The handlers exist: what arrived while the process started (held since its first
    # instruction, gateway/signals.py) is delivered now: a SIGTERM drains, a SIGHUP reloads.
    unblock_startup_signals()
    if reload_if is not None and reload_if():
        # The snapshot this worker booted from was replaced after it was loaded (a SIGHUP to the
        # supervisor meanwhile): load the config again rather than serve a stale one.
        worker.reload()
    if state.client is not None:
        Heartbeat(worker, state.client).start()     # supervised: counts for /ready from now on
    log.info("listening on %s:%d%s (max %d connections, backlog %d)", settings.host, settings.port,
             " (TLS)" if tls is not None else "", worker.max_connections, worker._backlog)
    if on_listening is not None:
        on_listening(worker)
    await worker.wait_stopped()
    allocator.stop()
    # Held again for the clean-up: a late SIGTERM waits for the exit instead of cutting it short.
    signal.pthread_sigmask(signal.SIG_SETMASK, mask)
    from gateway.observability.access import close_process_log

    close_process_log()     # the last buffered lines, written before the exit
    from gateway.observability.errorlog import close_process_error_log

    close_process_error_log()   # how many failed exchanges went unlogged, if any
    from gateway.observability.tracing import close_process_tracer

    close_process_tracer()  # the last spans, exported before the exit
    if admin_server is not None:
        admin_server.close()
    await state.close()
    return 0
