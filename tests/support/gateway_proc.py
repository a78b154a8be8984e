"""Run the real `gateway` command as a subprocess for integration tests.

    with GatewayProcess(config_text, env={"GATEWAY_WORKERS": "2"}) as gw:
        conn = socket.create_connection(("127.0.0.1", gw.port))
        ...
        assert gw.stop() == 0          # SIGTERM, wait, exit code

or with the `gateway` pytest fixture (a factory; every process it started is killed at teardown):

    def test_x(gateway):
        gw = gateway(config_text)

The process gets GATEWAY_HOST/GATEWAY_ADMIN_HOST = 127.0.0.1 and free ports for GATEWAY_PORT and
GATEWAY_ADMIN_PORT; the TOML text (if any) is written to a temporary file named by GATEWAY_CONFIG
(`write_config()` replaces it, `reload()` sends SIGHUP). stdout and stderr go to files, never pipes:
a chatty gateway can then never block on a full pipe while a test waits on it.
"""
from __future__ import annotations

import collections
import http.client
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


# Ports free_port handed out lately in this process: callers take two at once for a data and an
# admin listener (a CI run failed on "the admin listener overlaps the data listener"). Bounded.
_GIVEN: collections.deque[int] = collections.deque(maxlen=4096)
# Its own generator, seeded from the OS: two test runs on one machine do not walk the same ports.
_PICK = random.Random()


def listen_ports() -> range:
    """Ports the kernel never picks as a connection's source port: below (or above) its ephemeral
    range. A port from bind-to-0 is an ephemeral one, and between handing it out and the gateway
    binding it, any connect() on the machine may take it as its source port; its socket (or the
    TIME_WAIT left for 60 s after it closes) then makes the gateway's bind fail with "address
    already in use", SO_REUSEADDR or not (a CI run failed so). A port outside the range can only be
    taken by a program binding it explicitly."""
    try:
        low, high = map(int, Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split())
    except (OSError, ValueError):
        low, high = 32768, 60999  # Linux's default
    if low - 10000 >= 2000:
        return range(10000, low)
    if 65535 - high >= 2000:
        return range(high + 1, 65536)
    raise RuntimeError(f"the ephemeral port range {low}-{high} leaves no room for test listeners")


def free_port(host: str = "127.0.0.1") -> int:
    """A port nobody has bound right now, outside the ephemeral range (listen_ports) and not handed
    out lately by this process: another program may still bind it, but no connection takes it and
    two callers here never share one."""
    ports = listen_ports()
    while True:
        port = _PICK.choice(ports)
        if port in _GIVEN:
            continue
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:  # without SO_REUSEADDR: a listener or a TIME_WAIT on it makes this fail too
                s.bind((host, port))
            except OSError:
                continue
        _GIVEN.append(port)
        return port


def port_accepts(host: str, port: int, timeout: float = 0.2) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


class GatewayError(RuntimeError):
    """The gateway exited or did not come up; the message carries its stderr."""


class GatewayProcess:
    def __init__(
        self,
        config_text: str | None = None,
        env: Mapping[str, str] | None = None,
        *,
        args: Sequence[str] = ("run",),
        wait: bool = True,
        wait_admin: bool = True,
        start_timeout: float = 15.0,
    ) -> None:
        self.tmpdir = Path(tempfile.mkdtemp(prefix="gw-test-"))
        self.host = "127.0.0.1"
        self.port = free_port()
        self.admin_port = free_port()
        self.config_path: Path | None = None
        full_env = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}
        full_env.update(
            GATEWAY_HOST=self.host,
            GATEWAY_PORT=str(self.port),
            GATEWAY_ADMIN_HOST=self.host,
            GATEWAY_ADMIN_PORT=str(self.admin_port),
            PYTHONPATH=str(REPO) + os.pathsep + full_env.get("PYTHONPATH", ""),
            PYTHONUNBUFFERED="1",
        )
        if config_text is not None:
            self.config_path = self.tmpdir / "gateway.toml"
            self.config_path.write_text(config_text)
            full_env["GATEWAY_CONFIG"] = str(self.config_path)
        if env:
            full_env.update(env)
        # The caller's env may override the ports (e.g. the demo on a chosen port): follow it.
        self.port = int(full_env.get("GATEWAY_PORT", self.port))
        self.admin_port = int(full_env.get("GATEWAY_ADMIN_PORT", self.admin_port))
        self.env = full_env
        self._stdout_path = self.tmpdir / "stdout"
        self._stderr_path = self.tmpdir / "stderr"
        self._out = open(self._stdout_path, "wb")  # noqa: SIM115 - closed in _cleanup
        self._err = open(self._stderr_path, "wb")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "gateway", *args],
            env=full_env,
            cwd=str(REPO),
            stdin=subprocess.DEVNULL,
            stdout=self._out,
            stderr=self._err,
        )
        self.returncode: int | None = None
        if wait:
            self.wait_ready(start_timeout, admin=wait_admin)

    # --- observation ---
    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def stderr(self) -> str:
        return self._stderr_path.read_text(errors="replace")

    @property
    def stdout(self) -> str:
        return self._stdout_path.read_text(errors="replace")

    def alive(self) -> bool:
        return self.proc.poll() is None

    def wait_ready(self, timeout: float = 15.0, *, admin: bool = True) -> None:
        """Wait until the data port (and the admin port) accept connections."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise GatewayError(
                    f"gateway exited with {self.proc.returncode} before listening; stderr:\n{self.stderr}"
                )
            if port_accepts(self.host, self.port) and (
                not admin or port_accepts(self.host, self.admin_port)
            ):
                return
            time.sleep(0.05)
        raise GatewayError(f"gateway did not listen within {timeout}s; stderr:\n{self.stderr}")

    def wait_stderr(self, text: str, timeout: float = 10.0) -> str:
        """Wait until `text` appears on stderr; return the whole stderr."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            err = self.stderr
            if text in err:
                return err
            time.sleep(0.05)
        raise GatewayError(f"{text!r} not on stderr within {timeout}s; stderr:\n{self.stderr}")

    # --- control ---
    def write_config(self, text: str) -> None:
        assert self.config_path is not None, "started without a config file"
        # Write-then-rename: the gateway never reads a half-written file.
        tmp = self.config_path.with_suffix(".tmp")
        tmp.write_text(text)
        os.replace(tmp, self.config_path)

    def send_signal(self, sig: int) -> None:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, sig)

    def reload(self) -> None:
        self.send_signal(signal.SIGHUP)

    def wait(self, timeout: float = 30.0) -> int:
        self.returncode = self.proc.wait(timeout)
        return self.returncode

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30.0) -> int:
        """Send `sig` (SIGTERM: drain), wait for the exit, return the exit code. A process that
        does not exit in time is killed and reported with its log (what the drain waited for)."""
        self.send_signal(sig)
        try:
            return self.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise GatewayError(f"gateway did not exit {timeout:.0f} s after signal {sig}; stderr:\n"
                               f"{self.stderr[-6000:]}") from None
        finally:
            self._cleanup()

    def kill(self) -> None:
        """Hard stop (test teardown): SIGKILL the process and, with workers, its process group."""
        if self.proc.poll() is None:
            # Workers re-exec'd by the supervisor are its children; kill them too so a failed test
            # leaves nothing listening. They are found by parent pid (no broad name matching).
            for child in child_pids(self.proc.pid):
                try:
                    os.kill(child, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            self.proc.kill()
            self.proc.wait(10)
        self._cleanup()

    def _cleanup(self) -> None:
        for f in (self._out, self._err):
            if not f.closed:
                f.close()

    def __enter__(self) -> GatewayProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.kill()


def child_pids(pid: int) -> list[int]:
    """Direct children of `pid`, from /proc (Linux)."""
    out: list[int] = []
    try:
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            # Field 4 is the ppid; the command name (field 2) may hold spaces, so split after ')'.
            fields = stat.rsplit(")", 1)[1].split()
            if int(fields[1]) == pid:
                out.append(int(entry))
    except OSError:
        pass
    return out


@pytest.fixture
def gateway() -> Iterator[type[GatewayProcess]]:
    """Factory fixture: `gateway(config_text, env=..., ...)`; kills every process at teardown."""
    started: list[GatewayProcess] = []

    class _Tracked(GatewayProcess):
        def __init__(self, *a: object, **kw: object) -> None:
            started.append(self)
            super().__init__(*a, **kw)  # type: ignore[arg-type]

    yield _Tracked
    for gw in started:
        gw.kill()


# --- a real upstream and small HTTP helpers for the process-level tests ----------------------------
class UpstreamProcess:
    """`python tests/support/upstream.py --port 0` (the echo upstream), port read from its stdout."""

    def __init__(self, timeout: float = 10.0) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, str(REPO / "tests" / "support" / "upstream.py"), "--port", "0"],
            cwd=str(REPO), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
            text=True,
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()  # "listening 127.0.0.1:PORT"
        if not line.startswith("listening "):
            self.stop()
            raise RuntimeError(f"upstream did not start: {line!r}")
        self.host, port = line.split()[1].rsplit(":", 1)
        self.port = int(port)
        self.url = f"http://{self.host}:{self.port}"

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(10)
        if self.proc.stdout is not None:
            self.proc.stdout.close()


@pytest.fixture
def upstream() -> Iterator[UpstreamProcess]:
    up = UpstreamProcess()
    yield up
    up.stop()


def routes_toml(upstream_url: str, routes: Sequence[str]) -> str:
    """One service "up" on `upstream_url` and a prefix route per path, named after it."""
    out = [f'[[services]]\nname = "up"\ntargets = [{{ url = "{upstream_url}" }}]\n']
    for path in routes:
        name = path.strip("/").replace("/", "-") or "root"
        out.append(f'[[routes]]\nname = "{name}"\npath = "{path}"\nservice = "up"\n')
    return "\n".join(out)


def http_get(
    port: int, path: str, *, conn: http.client.HTTPConnection | None = None, timeout: float = 10.0,
    method: str = "GET",
) -> tuple[int, dict[str, str], bytes]:
    """One request (on `conn` when given, keeping it open); returns status, headers, body."""
    c = conn or http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        c.request(method, path)
        r = c.getresponse()
        body = r.read()
        return r.status, {k.lower(): v for k, v in r.getheaders()}, body
    finally:
        if conn is None:
            c.close()


def socket_owner(server_port: int, client_port: int, pids: Sequence[int]) -> int | None:
    """Which of `pids` holds the server side of the TCP connection from `client_port` (Linux /proc)."""
    inode = None
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            f = line.split()
            local, remote = f[1], f[2]
            if int(local.rsplit(":", 1)[1], 16) == server_port and int(remote.rsplit(":", 1)[1], 16) == client_port:
                inode = f[9]
                break
        if inode:
            break
    if not inode:
        return None
    want = f"socket:[{inode}]"
    for pid in pids:
        try:
            for fd in os.listdir(f"/proc/{pid}/fd"):
                try:
                    if os.readlink(f"/proc/{pid}/fd/{fd}") == want:
                        return pid
                except OSError:
                    continue
        except OSError:
            continue
    return None


def wait_until(predicate: Callable[[], object], timeout: float = 10.0, interval: float = 0.05) -> object:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"condition not met within {timeout}s")



def worker_pids(admin_port: int) -> list[int]:
    """The worker pids a running gateway's /health lists."""
    import json

    status, _, body = http_get(admin_port, "/health")
    assert status == 200
    return list(json.loads(body)["workers"])
