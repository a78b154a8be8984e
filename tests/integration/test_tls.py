"""TLS on both sides, end to end with certificates made here (trustme):

- downstream HTTPS (GATEWAY_TLS_CERT/_KEY): TLS 1.2+ only, ALPN http/1.1, X-Forwarded-Proto https,
  keep-alive; a bad certificate at start exits 2 naming the variable; SIGHUP loads a renewed
  certificate for new connections while established ones go on undisturbed, under load; a bad
  file on reload is refused with its reason and the old certificate stays; a peer that stalls its
  handshake is cut after GATEWAY_HEADER_TIMEOUT; the admin listener over TLS too;
- upstream https:// targets: verified against a service's `ca_file`, refused (502, the reason in
  the log with the client's request id) for a certificate nobody vouches for, `tls_verify = false`,
  pooled connections reused.
"""
from __future__ import annotations

import http.client
import json
import os
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

trustme = pytest.importorskip("trustme")

from tests.support.gateway_proc import (  # noqa: E402, F401 - gateway, upstream are fixtures
    REPO,
    gateway,
    routes_toml,
    upstream,
    wait_until,
)


# --- certificates and clients ----------------------------------------------------------------------
class Certs:
    """A test CA and the files a gateway reads; `issue()` writes a new leaf into the same paths."""

    def __init__(self, directory: Path) -> None:
        self.dir = directory
        self.ca = trustme.CA()
        self.cert = directory / "cert.pem"
        self.key = directory / "key.pem"
        self.ca_file = directory / "ca.pem"
        self.ca.cert_pem.write_to_path(str(self.ca_file))
        self.issue()

    def issue(self) -> bytes:
        """A fresh leaf for localhost/127.0.0.1 into cert.pem/key.pem (renamed in: never half
        written); returns its DER, to recognise which certificate a connection got."""
        leaf = self.ca.issue_cert("localhost", "127.0.0.1")
        for blob, path in ((leaf.cert_chain_pems[0], self.cert), (leaf.private_key_pem, self.key)):
            tmp = path.with_suffix(".tmp")
            blob.write_to_path(str(tmp))
            os.replace(tmp, path)
        return ssl.PEM_cert_to_DER_cert(leaf.cert_chain_pems[0].bytes().decode())

    def client_context(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context()
        self.ca.configure_trust(ctx)
        return ctx

    def env(self) -> dict[str, str]:
        return {"GATEWAY_TLS_CERT": str(self.cert), "GATEWAY_TLS_KEY": str(self.key)}


@pytest.fixture
def certs(tmp_path: Path) -> Certs:
    return Certs(tmp_path)


def https(port: int, certs: Certs, timeout: float = 10.0) -> http.client.HTTPSConnection:
    return http.client.HTTPSConnection("localhost", port, timeout=timeout, context=certs.client_context())


def get(conn: http.client.HTTPConnection, path: str) -> tuple[int, dict[str, str], bytes]:
    conn.request("GET", path)
    r = conn.getresponse()
    return r.status, {k.lower(): v for k, v in r.getheaders()}, r.read()


def peer_der(conn: http.client.HTTPSConnection) -> bytes:
    assert conn.sock is not None
    der = conn.sock.getpeercert(binary_form=True)
    assert der is not None
    return der


class TLSUpstream:
    """tests/support/upstream.py (the echo upstream) serving HTTPS with `certs`' current leaf."""

    def __init__(self, certs: Certs, host: str = "127.0.0.1") -> None:
        self.proc = subprocess.Popen(
            [sys.executable, str(REPO / "tests" / "support" / "upstream.py"), "--host", host, "--port", "0",
             "--tls-cert", str(certs.cert), "--tls-key", str(certs.key)],
            cwd=str(REPO), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        assert line.startswith("listening "), line
        self.port = int(line.split()[1].rsplit(":", 1)[1])

    def stop(self) -> None:
        self.proc.kill()
        self.proc.wait(10)
        assert self.proc.stdout is not None
        self.proc.stdout.close()


@pytest.fixture
def tls_upstream(tmp_path: Path) -> Iterator[tuple[TLSUpstream, Certs]]:
    (tmp_path / "upstream").mkdir()
    up_certs = Certs(tmp_path / "upstream")
    up = TLSUpstream(up_certs)
    yield up, up_certs
    up.stop()


# --- downstream --------------------------------------------------------------------------------------
def test_https_end_to_end(gateway, upstream, certs) -> None:  # noqa: F811
    gw = gateway(routes_toml(upstream.url, ["/"]), env=certs.env())
    conn = https(gw.port, certs)
    status, headers, body = get(conn, "/a")
    assert status == 200, body
    echo = json.loads(body)
    assert ("X-Forwarded-Proto", "https") in [tuple(h) for h in echo["headers"]]
    assert conn.sock.version() in ("TLSv1.2", "TLSv1.3")      # type: ignore[union-attr]
    sock = conn.sock
    assert get(conn, "/b")[0] == 200
    assert conn.sock is sock                                  # keep-alive over TLS
    conn.close()
    # ALPN: a browser-like client offering h2 first is told http/1.1 (what we speak); one offering
    # only h2 gets no protocol agreed (so it must not send h2 frames), never h2.
    for offer, agreed in ((["h2", "http/1.1"], "http/1.1"), (["h2"], None)):
        ctx = certs.client_context()
        ctx.set_alpn_protocols(offer)
        with socket.create_connection(("127.0.0.1", gw.port), timeout=5) as raw, \
                ctx.wrap_socket(raw, server_hostname="localhost") as tls:
            assert tls.selected_alpn_protocol() == agreed
    # TLS 1.1 and older are refused.
    old = certs.client_context()
    with pytest.warns(DeprecationWarning):   # (so old that Python warns about asking for it)
        old.minimum_version = ssl.TLSVersion.TLSv1
        old.maximum_version = ssl.TLSVersion.TLSv1_1
    old.set_ciphers("ALL:@SECLEVEL=0")
    with pytest.raises(ssl.SSLError), socket.create_connection(("127.0.0.1", gw.port), timeout=5) as raw, \
            old.wrap_socket(raw, server_hostname="localhost"):
        pass
    # Plain HTTP on the TLS port is not served.
    with socket.create_connection(("127.0.0.1", gw.port), timeout=5) as raw:
        raw.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        assert b"HTTP/1.1 200" not in raw.recv(4096)
    assert gw.alive()
    assert gw.stop() == 0


def test_a_client_close_notify_closes_quietly(gateway, upstream, certs) -> None:  # noqa: F811
    # TLS has no half-close in uvloop: the client's close_notify ends the connection. Answered
    # without the warning asyncio logs when a protocol asks to keep a TLS transport open (which
    # would be one log line per closing client).
    gw = gateway(routes_toml(upstream.url, ["/"]), env=certs.env())
    for _ in range(3):
        with socket.create_connection(("127.0.0.1", gw.port), timeout=10) as raw:
            tls = certs.client_context().wrap_socket(raw, server_hostname="localhost")
            tls.sendall(b"GET /x HTTP/1.1\r\nHost: localhost\r\n\r\n")
            head = b""
            while b"\r\n\r\n" not in head:
                head += tls.recv(65536)
            assert head.startswith(b"HTTP/1.1 200"), head
            tls.unwrap()       # close_notify, and the gateway's in return
    assert get(https(gw.port, certs), "/x")[0] == 200
    assert gw.stop() == 0
    assert "eof_received" not in gw.stderr, gw.stderr


def _rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def test_a_tls_client_that_does_not_read_bounds_gateway_memory(gateway, upstream, certs) -> None:  # noqa: F811
    # The TLS layer has buffers of its own between our writes and the socket: the client's full
    # socket must still reach the gateway's flow control (pause_writing) and stop the upstream.
    gw = gateway(routes_toml(upstream.url, ["/"]), env=certs.env())
    size = 64 * 1024 * 1024
    raw = socket.create_connection(("127.0.0.1", gw.port), timeout=20)
    raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
    tls = certs.client_context().wrap_socket(raw, server_hostname="localhost")
    try:
        before = _rss_mib(gw.pid)
        tls.sendall(b"GET /large?bytes=%d HTTP/1.1\r\nHost: localhost\r\n\r\n" % size)
        time.sleep(1.5)     # not reading (below GATEWAY_BODY_TIMEOUT's 30 s)
        grown = _rss_mib(gw.pid) - before
        assert grown < 16, f"gateway RSS grew {grown:.1f} MiB while the TLS client was not reading"
        got = 0
        while got < size:     # and then the whole body arrives
            chunk = tls.recv(1 << 20)
            assert chunk, got
            got += len(chunk)
    finally:
        tls.close()
    assert gw.stop() == 0


def test_an_upstream_that_stalls_the_handshake_is_a_502_within_the_connect_timeout(gateway) -> None:  # noqa: F811
    # A port that accepts and never answers the ClientHello: the handshake counts against
    # GATEWAY_UPSTREAM_CONNECT_TIMEOUT like the TCP connect does.
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    try:
        toml = (f'[[services]]\nname = "up"\ntargets = ["https://127.0.0.1:{port}"]\ntls_verify = false\n'
                '[[routes]]\nname = "all"\npath = "/"\nservice = "up"\n')
        gw = gateway(toml, env={"GATEWAY_UPSTREAM_CONNECT_TIMEOUT": "1"})
        c = http.client.HTTPConnection("127.0.0.1", gw.port, timeout=10)
        start = time.monotonic()
        status, _, _ = get(c, "/x")
        assert status == 502
        assert 0.9 < time.monotonic() - start < 4
        gw.wait_stderr("no connection within 1s")
        assert gw.stop() == 0
    finally:
        listener.close()


@pytest.mark.parametrize("case", ["garbage-cert", "key-mismatch", "missing-key-file", "cert-only"])
def test_a_bad_certificate_at_start_exits_2_naming_the_variable(gateway, certs, tmp_path, case) -> None:  # noqa: F811
    env = certs.env()
    want = "GATEWAY_TLS_CERT"
    if case == "garbage-cert":
        (tmp_path / "bad.pem").write_text("-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n")
        env["GATEWAY_TLS_CERT"] = str(tmp_path / "bad.pem")
    elif case == "key-mismatch":
        other = trustme.CA().issue_cert("localhost")
        other.private_key_pem.write_to_path(str(tmp_path / "other.key"))
        env["GATEWAY_TLS_KEY"] = str(tmp_path / "other.key")
    elif case == "missing-key-file":
        env["GATEWAY_TLS_KEY"] = str(tmp_path / "nope.key")
        want = "GATEWAY_TLS_KEY"
    else:
        del env["GATEWAY_TLS_KEY"]
        want = "GATEWAY_TLS_CERT"
    gw = gateway(None, env=env, wait=False)
    assert gw.wait(20) == 2
    assert want in gw.stderr, gw.stderr
    assert "Traceback" not in gw.stderr


def _load(port: int, certs: Certs, stop: threading.Event, out: dict[str, object], n: int) -> None:
    """One client: a keep-alive HTTPS connection sending requests back to back until `stop`."""
    conn = https(port, certs)
    try:
        status, _, _ = get(conn, "/x")
        sock, der = conn.sock, peer_der(conn)
        count = 1
        while not stop.is_set():
            status, _, body = get(conn, "/x")
            if status != 200:
                raise AssertionError(f"status {status}: {body[:200]!r}")
            count += 1
        out[f"ok{n}"] = (count, conn.sock is sock, der)
    except Exception as exc:  # noqa: BLE001 - reported by the test
        out[f"err{n}"] = repr(exc)
    finally:
        conn.close()


def test_certificate_reload_under_load_drops_nothing(gateway, upstream, certs) -> None:  # noqa: F811
    gw = gateway(routes_toml(upstream.url, ["/"]), env=certs.env())
    first = peer_der(_connected(gw.port, certs))
    stop = threading.Event()
    out: dict[str, object] = {}
    clients = [threading.Thread(target=_load, args=(gw.port, certs, stop, out, i), daemon=True) for i in range(4)]
    for t in clients:
        t.start()
    time.sleep(0.5)
    renewed = certs.issue()
    assert renewed != first
    gw.reload()
    gw.wait_stderr("TLS certificate reloaded")
    # New connections get the renewed certificate, at once and every time.
    for _ in range(3):
        assert peer_der(_connected(gw.port, certs)) == renewed
    time.sleep(0.5)           # the established connections keep going after the swap
    stop.set()
    for t in clients:
        t.join(15)
    errors = {k: v for k, v in out.items() if k.startswith("err")}
    assert not errors, errors
    for i in range(4):
        count, same_socket, der = out[f"ok{i}"]  # type: ignore[misc]
        assert same_socket and der == first, (i, out[f"ok{i}"])
        assert count > 5, out
    assert gw.stop() == 0


def _connected(port: int, certs: Certs) -> http.client.HTTPSConnection:
    conn = https(port, certs)
    assert get(conn, "/x")[0] == 200
    conn.close = lambda: None   # type: ignore[method-assign]  # (the caller only reads the peer cert)
    return conn


def test_a_bad_certificate_on_reload_is_refused_and_the_old_one_stays(gateway, upstream, certs) -> None:  # noqa: F811
    gw = gateway(routes_toml(upstream.url, ["/"]), env=certs.env())
    first = peer_der(_connected(gw.port, certs))
    certs.cert.write_text("-----BEGIN CERTIFICATE-----\nbroken\n-----END CERTIFICATE-----\n")
    gw.reload()
    err = gw.wait_stderr("TLS certificate reload refused")
    line = next(ln for ln in err.splitlines() if "TLS certificate reload refused" in ln)
    assert "GATEWAY_TLS_CERT" in line and str(certs.cert) in line, line
    assert "keeping the previous certificate" in line
    assert gw.alive()
    assert peer_der(_connected(gw.port, certs)) == first
    # A good certificate later is taken.
    renewed = certs.issue()
    gw.reload()
    gw.wait_stderr("TLS certificate reloaded")
    assert peer_der(_connected(gw.port, certs)) == renewed
    assert gw.stop() == 0


def test_a_stalled_handshake_is_cut_after_the_header_timeout(gateway, upstream, certs) -> None:  # noqa: F811
    gw = gateway(routes_toml(upstream.url, ["/"]), env={**certs.env(), "GATEWAY_HEADER_TIMEOUT": "1"})
    with socket.create_connection(("127.0.0.1", gw.port), timeout=10) as raw:
        raw.sendall(b"\x16")          # the first byte of a ClientHello, then nothing
        start = time.monotonic()
        assert raw.recv(100) == b""   # closed by the gateway
        assert time.monotonic() - start < 5
    # The listener is fine afterwards.
    assert get(https(gw.port, certs), "/x")[0] == 200
    assert gw.stop() == 0


def test_admin_over_tls_with_workers_and_reload(gateway, upstream, certs, tmp_path) -> None:  # noqa: F811
    (tmp_path / "admin").mkdir()
    admin = Certs(tmp_path / "admin")
    env = {**certs.env(), "GATEWAY_WORKERS": "2",
           "GATEWAY_ADMIN_TLS_CERT": str(admin.cert), "GATEWAY_ADMIN_TLS_KEY": str(admin.key)}
    gw = gateway(routes_toml(upstream.url, ["/"]), env=env)
    wait_until(lambda: gw.stderr.count("worker: listening on") >= 2)
    conn = http.client.HTTPSConnection("localhost", gw.admin_port, timeout=10, context=admin.client_context())
    status, _, body = get(conn, "/health")
    assert status == 200, body
    assert len(json.loads(body)["workers"]) == 2
    first_admin = peer_der(conn)
    conn.close()
    renewed, renewed_admin = certs.issue(), admin.issue()
    gw.reload()
    wait_until(lambda: gw.stderr.count("TLS certificate reloaded") >= 3)   # two workers, the admin
    for _ in range(4):   # (connections spread over both workers)
        assert peer_der(_connected(gw.port, certs)) == renewed
    conn = http.client.HTTPSConnection("localhost", gw.admin_port, timeout=10, context=admin.client_context())
    assert get(conn, "/health")[0] == 200
    assert peer_der(conn) == renewed_admin != first_admin
    conn.close()
    assert gw.stop() == 0


# --- upstream ---------------------------------------------------------------------------------------
def _https_service(port: int, extra: str = "") -> str:
    return (f'[[services]]\nname = "up"\ntargets = ["https://localhost:{port}"]\n{extra}\n'
            '[[routes]]\nname = "all"\npath = "/"\nservice = "up"\n')


def test_https_upstream_verified_with_the_service_ca_and_pooled(gateway, tls_upstream) -> None:  # noqa: F811
    up, up_certs = tls_upstream
    gw = gateway(_https_service(up.port, f'ca_file = "{up_certs.ca_file}"'))
    conns = set()
    for i in range(3):
        # A new client connection each time: the upstream connection is the pool's, reused.
        c = http.client.HTTPConnection("127.0.0.1", gw.port, timeout=10)
        status, _, body = get(c, f"/r{i}")
        c.close()
        assert status == 200, body
        echo = json.loads(body)
        assert ("Host", f"localhost:{up.port}") in [tuple(h) for h in echo["headers"]]
        conns.add(echo["conn"])
    assert len(conns) == 1, conns     # one TLS connection (one handshake) served all three
    assert gw.stop() == 0


def test_an_untrusted_upstream_certificate_is_a_502_with_the_reason_logged(gateway, tls_upstream) -> None:  # noqa: F811
    up, _ = tls_upstream
    gw = gateway(_https_service(up.port))     # the system CA bundle does not know the test CA
    c = http.client.HTTPConnection("127.0.0.1", gw.port, timeout=10)
    status, headers, body = get(c, "/x")
    assert status == 502, body
    rid = headers["x-request-id"]
    # The error log's one line for the exchange names the request, the target and the TLS reason.
    err = gw.wait_stderr(f"failed exchange: request_id={rid}")
    failed = next(ln for ln in err.splitlines() if f"failed exchange: request_id={rid}" in ln)
    assert "status=502" in failed and "kind=upstream_connect" in failed, failed
    assert f"https://localhost:{up.port}" in failed, failed
    assert 'reason="' in failed and "certificate verify failed" in failed, failed
    assert gw.stop() == 0


def test_tls_verify_false_accepts_any_certificate(gateway, tls_upstream) -> None:  # noqa: F811
    up, _ = tls_upstream
    gw = gateway(_https_service(up.port, "tls_verify = false"))
    c = http.client.HTTPConnection("127.0.0.1", gw.port, timeout=10)
    status, _, body = get(c, "/x")
    assert status == 200, body
    assert gw.stop() == 0


def test_a_wrong_host_name_is_refused_even_with_the_right_ca(gateway, tmp_path) -> None:  # noqa: F811
    # The leaf names localhost and 127.0.0.1; "127.0.0.2" reaches the same server (bound to every
    # address) under a name the certificate does not carry: the check is on the target's host,
    # not only on the CA.
    up_certs = Certs(tmp_path)
    up = TLSUpstream(up_certs, host="0.0.0.0")
    try:
        toml = _https_service(up.port, f'ca_file = "{up_certs.ca_file}"').replace("localhost", "127.0.0.2")
        gw = gateway(toml)
        c = http.client.HTTPConnection("127.0.0.1", gw.port, timeout=10)
        assert get(c, "/x")[0] == 502
        line = next(ln for ln in gw.wait_stderr("certificate verify failed").splitlines() if "verify failed" in ln)
        assert "IP address mismatch" in line or "hostname" in line.lower(), line
        assert gw.stop() == 0
    finally:
        up.stop()


def test_a_websocket_over_tls_on_both_sides(gateway, certs, tmp_path) -> None:  # noqa: F811
    # The tunnel over two TLS transports: messages both ways, and the ends' close_notify ends the
    # tunnel without the asyncio warning a half-close request over TLS would log.
    from websockets.sync.client import connect

    (tmp_path / "up").mkdir()
    up_certs = Certs(tmp_path / "up")
    proc = subprocess.Popen(
        [sys.executable, str(REPO / "tests" / "support" / "ws_upstream.py"), "--port", "0",
         "--tls-cert", str(up_certs.cert), "--tls-key", str(up_certs.key)],
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line.startswith("listening "), line
        port = int(line.split()[1].rsplit(":", 1)[1])
        toml = (f'[[services]]\nname = "ws"\ntargets = ["https://localhost:{port}"]\n'
                f'ca_file = "{up_certs.ca_file}"\n'
                '[[routes]]\nname = "ws"\npath = "/ws"\nservice = "ws"\nwebsocket = true\n')
        gw = gateway(toml, env=certs.env())
        for _ in range(2):
            with connect(f"wss://localhost:{gw.port}/ws/echo", ssl=certs.client_context(),
                         ping_interval=None, open_timeout=10) as ws:
                for i in range(3):
                    ws.send(f"m{i}")
                    assert ws.recv(timeout=10) == f"m{i}"
        # A plain client this time, and the upstream closes first: its close_notify reaches a
        # tunnel whose client side could take a half-close; over TLS it ends the tunnel.
        plain = gateway(toml)
        for _ in range(2):
            with connect(f"ws://127.0.0.1:{plain.port}/ws/bye", ping_interval=None, open_timeout=10) as ws:
                assert ws.recv(timeout=10) == "bye"
                time.sleep(0.3)       # the upstream's close (and its close_notify) arrive meanwhile
        time.sleep(0.5)
        for g in (gw, plain):
            assert g.stop() == 0
            assert "eof_received" not in g.stderr, g.stderr
    finally:
        proc.kill()
        proc.wait(10)
        if proc.stdout is not None:
            proc.stdout.close()
