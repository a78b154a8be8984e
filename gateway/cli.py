"""The `gateway` command (SPEC §1): run (default), demo, check, jwt, apikey, version, help.

Help texts: gateway/cli_help.py (each ends with every variable, from the config code's own table).

Exit codes: 0 success (including a drained shutdown), 2 bad configuration (one line per problem on
stderr, each naming the variable or the TOML path), 1 a run-time failure such as a port in use (one
line naming the variable to change).

`gateway _worker N` is internal: the supervisor re-executes the command with it to start worker N
(see gateway/supervisor.py for why re-exec rather than fork).

Signals: main()'s first instruction holds SIGHUP, SIGTERM, SIGINT, SIGUSR1 and SIGQUIT (gateway/signals.py);
the serving commands release them once their loop handles them, the others at once. This module
imports nothing heavy at its top (asyncio alone costs ~50 ms), so that the console script reaches
that instruction right after the interpreter has started.
"""
from __future__ import annotations

import os
import sys

TYPE_CHECKING = False    # not typing's: importing typing costs ~4 ms before main() can block signals
if TYPE_CHECKING:
    from collections.abc import Sequence
    from typing import Any


def err(line: str) -> None:
    from gateway.process import err as print_err

    print_err(line)


def run_loop(coro: Any) -> int:
    from gateway.process import run_loop as run

    return run(coro)



LATER: set[str] = set()
SERVING = frozenset({"run", "_worker", "demo"})   # they unblock the start-up signals themselves
_errors: list[str] = []     # the lines printed by _err: a worker's last words come from here


def _err(line: str) -> None:
    _errors.append(line)
    del _errors[:-4]
    err(line)
# Set by the supervisor for its workers (gateway/supervisor.py): not an operator's variable.
INTERNAL_VARIABLES = {"GATEWAY_WORKER_INDEX"}


def _config_problem_lines(exc: Any) -> list[str]:
    source = getattr(exc, "source", None)
    out = []
    for p in exc.problems:
        out.append(p if source is None or p.startswith(str(source)) else f"{source}: {p}")
    return out


def load_all(environ: dict[str, str] | os._Environ[str], *, with_config: bool = True) -> tuple[Any, Any, int]:
    """Settings and config; on errors print one line per problem and return exit code 2."""
    from gateway.config import ConfigurationError, load_config, load_settings

    try:
        settings = load_settings(environ)
    except ConfigurationError as exc:
        for line in exc.problems:
            _err(line)
        return None, None, 2
    if not with_config:
        return settings, None, 0
    try:
        config = load_config(settings.config)
    except ConfigurationError as exc:
        for line in _config_problem_lines(exc):
            _err(line)
        return settings, None, 2
    from gateway.security.commands import config_problems

    problems = config_problems(settings, config)
    for line in problems:
        _err(f"{settings.config}: {line}")
    return settings, config, 2 if problems else 0


CHECK_FLAGS = frozenset({"--dump", "-T", "--bind-test"})


def cmd_check(flags: set[str]) -> int:
    """Validate; print the settings in force (and with --dump/-T the whole config as TOML)."""
    from gateway.config import unknown_variables
    from gateway.preflight import listener_problems, log_file_problems

    settings, config, code = load_all(os.environ)
    if code:
        return code
    problems = log_file_problems(settings) + listener_problems(settings, bind_test="--bind-test" in flags)
    for line in problems:
        _err(line)
    if problems:
        return 2
    for name, value in settings.masked().items():
        print(f"{name}={value}")
    for name in unknown_variables(os.environ):
        if name not in INTERNAL_VARIABLES:
            err(f"warning: {name} is not a gateway variable (typo?)")
    src = settings.config or "(none: no routes, every request answers 404)"
    if flags & {"--dump", "-T"}:
        from gateway.config.effective import effective, to_toml

        print(f"\n# configuration in force: {src}, every default written out")
        print(to_toml(effective(settings, config)), end="")
    print(f"# config {src}: {len(config.services)} services, {len(config.routes)} routes: OK")
    return 0


def log_start(settings: Any, config: Any) -> None:
    """One INFO line that says what is starting: version, file, services, routes, workers, addresses."""
    import logging

    from gateway import __version__

    logging.getLogger("gateway.cli").info(
        "gateway %s starting: config %s (%d services, %d routes), %d worker%s, data %s:%d, admin %s:%d",
        __version__, settings.config or "(none)", len(config.services), len(config.routes), settings.workers,
        "" if settings.workers == 1 else "s", settings.host, settings.port, settings.admin_host, settings.admin_port)


def cmd_run() -> int:
    settings, config, code = load_all(os.environ)
    if code:
        return code
    log_start(settings, config)
    if settings.workers > 1:
        from gateway.supervisor import Supervisor

        return Supervisor(settings).run()
    # One process, no supervisor: it owns the address itself (gateway/portlock.py). Without
    # GATEWAY_REUSE_PORT=shared it binds without SO_REUSEPORT: nothing can join it either.
    from gateway.portlock import AddressLock

    try:
        lock = AddressLock.acquire(settings.host, settings.port, shared=settings.reuse_port)
    except OSError as exc:
        err(str(exc))
        return 1
    with lock:
        return _serve_single(settings, config, settings.config, admin=True, reuse_port=settings.reuse_port)


def cmd_worker(args: Sequence[str]) -> int:
    """Internal: one supervised worker (no admin listener; SO_REUSEPORT shares the port).

    It boots from the supervisor's snapshot of the last valid config (BOOT_CONFIG_ENV), not from
    GATEWAY_CONFIG: a worker replaced while the file on disk is broken still starts with the config
    the others serve. SIGHUP reloads read GATEWAY_CONFIG as usual. When it cannot start, it tells
    the supervisor why over its state channel (LastWords) besides printing it.
    """
    from gateway.state.client import LastWords

    last_words = LastWords()
    try:
        code = _worker_process()
    except BaseException as exc:
        if not isinstance(exc, KeyboardInterrupt | SystemExit):
            last_words.say(f"{type(exc).__name__}: {exc}")
        raise
    if code and _errors:
        last_words.say(_errors[-1])     # the one-line reason it printed (port in use, bad config...)
    else:
        last_words.close()
    return code


def _worker_process() -> int:
    from gateway.config import ConfigurationError, load_config
    from gateway.process import BOOT_CONFIG_ENV
    from gateway.worker import follow_supervisor, mtime

    if not follow_supervisor():
        _err("worker: the supervisor is gone; not starting")
        return 1
    settings, _, code = load_all(os.environ, with_config=False)
    if code:
        return code
    boot = os.environ.get(BOOT_CONFIG_ENV) or settings.config
    # Taken before loading, so a change racing with the load is seen as a change (then reload).
    before = mtime(boot) if boot else None
    try:
        config = load_config(boot)
    except ConfigurationError as exc:
        for line in _config_problem_lines(exc):
            _err(line)
        return 2

    def changed() -> bool:
        return boot is not None and mtime(boot) != before

    return _serve_single(settings, config, settings.config, admin=False, reuse_port=True, reload_if=changed)


def _serve_single(settings: Any, config: Any, config_path: str | None, *, admin: bool, reuse_port: bool,
                  reload_if: Any = None) -> int:
    from gateway.state.memory import SharedMemoryFull
    from gateway.worker import run_worker

    try:
        return run_loop(run_worker(settings, config, config_path=config_path, admin=admin, reuse_port=reuse_port,
                                   reload_if=reload_if))
    except OSError as exc:  # ListenError and the admin bind error carry one operator-ready line
        _err(exc.strerror or str(exc))
        return 1
    except SharedMemoryFull as exc:  # the config's shared objects do not fit: names GATEWAY_SHM_SIZE
        _err(str(exc))
        return 2


def cmd_demo() -> int:
    settings, _, code = load_all(os.environ, with_config=False)
    if code:
        return code
    from gateway.demo import run_demo

    try:
        return run_loop(run_demo(settings))
    except OSError as exc:
        err(exc.strerror or str(exc))
        return 1


def main(argv: Sequence[str] | None = None) -> int:
    """The `gateway` command; returns its exit code (see the module docstring for signals)."""
    from gateway.signals import block_startup_signals, unblock_startup_signals

    block_startup_signals()     # first: a SIGHUP from here on is held, not fatal
    args = list(sys.argv[1:] if argv is None else argv)
    if (args[0] if args else "run") not in SERVING:
        unblock_startup_signals()   # check, help, errors: Ctrl-C and SIGTERM act at once
    cmd = args[0] if args else "run"
    rest = args[1:]
    # Help and version first: they must answer whatever the environment holds.
    if cmd in ("-h", "--help", "help"):
        return _help(rest[0] if rest else None)
    if cmd != "_worker" and any(a in ("-h", "--help") for a in rest):
        return _help(cmd)                   # `gateway check --help`, `gateway apikey create -h`...
    if cmd in ("--version", "version"):
        from gateway import __version__

        print(f"gateway {__version__}")
        return 0
    from gateway.logs import LogLevelError, setup_logging

    try:
        setup_logging(os.environ)
    except LogLevelError as exc:
        err(str(exc))
        return 2
    if cmd == "_worker":
        return cmd_worker(rest)
    if cmd in LATER:
        err(f"{cmd}: not supported yet (it comes with authentication in a later release)")
        return 2
    if cmd == "jwt":
        settings, _, code = load_all(os.environ, with_config=False)
        if code:
            return code
        from gateway.security.commands import cmd_jwt

        return cmd_jwt(settings, rest, err)
    if cmd == "apikey":
        settings, _, code = load_all(os.environ, with_config=False)
        if code:
            return code
        from gateway.security.commands import cmd_apikey

        return cmd_apikey(settings, rest, err)
    from gateway.cli_help import short_usage

    if cmd not in ("run", "demo", "check"):
        err(f"unknown command {cmd!r}")
        print(short_usage(), end="", file=sys.stderr)
        return 2
    if cmd == "check" and set(rest) <= CHECK_FLAGS:
        return cmd_check(set(rest))
    if rest:
        hint = " (configuration is by GATEWAY_* variables; gateway --help lists them)"
        if cmd == "check":
            hint = f" (check takes {', '.join(sorted(CHECK_FLAGS))})"
        err(f"{cmd}: unexpected arguments {' '.join(rest)!r}{hint}")
        return 2
    if cmd == "demo":
        return cmd_demo()
    return cmd_run()


def _help(command: str | None) -> int:
    from gateway.cli_help import COMMANDS, TOPICS, short_usage, usage

    if command is not None and command not in COMMANDS and command not in TOPICS:
        err(f"help: unknown command {command!r}")
        print(short_usage(), end="", file=sys.stderr)
        return 2
    print(usage(command), end="")
    return 0


def entry() -> None:
    sys.exit(main())


if __name__ == "__main__":
    entry()
