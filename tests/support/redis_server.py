"""A private redis-server per test session, on a free loopback port.

The suite never borrows the machine's shared Redis (other runs may use it) and never skips Redis
tests: if no server can be had, the fixture fails with the reason. `GATEWAY_TEST_REDIS_URL` points the
suite at an existing server instead (e.g. a Redis Cluster set up by hand).
"""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from tests.support.gateway_proc import free_port


def _wait_ready(proc: subprocess.Popen[bytes], port: int, logfile: str, deadline: float) -> None:
    """Until the server answers PING on `port` (raises with the log's tail if it never does)."""
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), 0.2) as s:
                s.sendall(b"PING\r\n")
                if s.recv(16).startswith(b"+PONG"):
                    return
        except OSError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            try:
                with open(logfile) as f:
                    log = f.read()[-2000:]
            except OSError:
                log = "(no log)"
            raise RuntimeError(f"redis-server did not start on port {port}:\n{log}")
        time.sleep(0.02)


def _redis_exe() -> str:
    exe = shutil.which("redis-server")
    if exe is None:
        raise RuntimeError("redis-server is not installed: `apt-get install redis-server` "
                           "(or set GATEWAY_TEST_REDIS_URL); Redis tests are never skipped")
    return exe


@contextmanager
def private_redis() -> Iterator[str]:
    """Start redis-server on a free port; yield its URL; stop it afterwards."""
    url = os.environ.get("GATEWAY_TEST_REDIS_URL")
    if url:
        yield url
        return
    with RedisProcess() as server:
        yield server.url


class RedisProcess:
    """A private redis-server a test controls: kill, pause/resume (SIGSTOP/SIGCONT), restart on
    the same port. Never the machine's shared Redis, never the session's: tests that break Redis
    on purpose break only their own.

    `unixsocket=True` also listens on a unix socket (`unix_url`); `tls=True` also on a TLS port
    with a fresh self-signed certificate (`tls_url`, verified against that certificate);
    `cluster=True` makes it a one-node Redis Cluster owning all 16384 slots (a real cluster for
    RedisCluster clients).
    """

    def __init__(self, *, unixsocket: bool = False, tls: bool = False, cluster: bool = False) -> None:
        self.exe = _redis_exe()
        self.workdir = tempfile.mkdtemp(prefix="gw-redis-")
        self.cluster = cluster
        self.port = free_port()
        if cluster:   # the cluster bus listens on port + 10000
            while self.port + 10000 > 65535 or not _port_free(self.port + 10000):
                self.port = free_port()
        self.socket_path = os.path.join(self.workdir, "redis.sock") if unixsocket else None
        self.tls_port = free_port() if tls else None
        if tls:
            subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
                            "-keyout", os.path.join(self.workdir, "key.pem"),
                            "-out", os.path.join(self.workdir, "cert.pem"),
                            "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"],
                           check=True, capture_output=True)
        self.logfile = os.path.join(self.workdir, "redis.log")
        self.proc: subprocess.Popen[bytes] | None = None
        self.paused = False

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def unix_url(self) -> str:
        assert self.socket_path is not None, "started without unixsocket=True"
        return f"unix://{self.socket_path}"

    @property
    def tls_url(self) -> str:
        assert self.tls_port is not None, "started without tls=True"
        ca = os.path.join(self.workdir, "cert.pem")
        return f"rediss://127.0.0.1:{self.tls_port}/0?ssl_ca_certs={ca}"

    def start(self) -> None:
        assert self.proc is None or self.proc.poll() is not None, "already running"
        args = [self.exe, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                "--appendonly", "no", "--dir", self.workdir, "--logfile", self.logfile]
        if self.socket_path:
            args += ["--unixsocket", self.socket_path, "--unixsocketperm", "700"]
        if self.tls_port:
            args += ["--tls-port", str(self.tls_port), "--tls-auth-clients", "no",
                     "--tls-cert-file", os.path.join(self.workdir, "cert.pem"),
                     "--tls-key-file", os.path.join(self.workdir, "key.pem"),
                     "--tls-ca-cert-file", os.path.join(self.workdir, "cert.pem")]
        if self.cluster:
            args += ["--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
                     "--cluster-announce-ip", "127.0.0.1"]
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        self.paused = False
        _wait_ready(self.proc, self.port, self.logfile, time.monotonic() + 10)
        if self.cluster:
            self._form_cluster()

    def _form_cluster(self) -> None:
        import redis
        r = redis.Redis(port=self.port, socket_timeout=2)
        try:
            info = r.execute_command("CLUSTER", "INFO")
            if b"cluster_state:ok" not in info:
                r.execute_command("CLUSTER", "ADDSLOTSRANGE", 0, 16383)
            deadline = time.monotonic() + 10
            while b"cluster_state:ok" not in r.execute_command("CLUSTER", "INFO"):
                if time.monotonic() > deadline:
                    raise RuntimeError("one-node cluster never reached cluster_state:ok")
                time.sleep(0.02)
        finally:
            r.close()

    def client(self) -> Any:
        """A plain (sync) redis-py client for assertions and for poking at the server."""
        import redis
        return redis.Redis(port=self.port, socket_timeout=5)

    def kill(self) -> None:
        """SIGKILL (works on a paused server too) and reap."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)
        self.paused = False

    def stop(self) -> None:
        """SIGTERM, then SIGKILL after 5 s."""
        if self.proc is not None and self.proc.poll() is None:
            if self.paused:
                self.resume()
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.kill()

    def pause(self) -> None:
        assert self.proc is not None and self.proc.poll() is None
        self.proc.send_signal(signal.SIGSTOP)
        self.paused = True

    def resume(self) -> None:
        assert self.proc is not None and self.proc.poll() is None
        self.proc.send_signal(signal.SIGCONT)
        self.paused = False

    def restart(self) -> None:
        """Kill and start again on the same port (empty: no persistence)."""
        self.kill()
        self.start()

    def close(self) -> None:
        self.kill()
        shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> RedisProcess:
        try:
            self.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True
