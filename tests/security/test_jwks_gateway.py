"""JWKS through a real gateway process: keys fetched at start (in the background), a rotated key
picked up on its first unknown kid within the 10 s cooldown, a dropped kid refused, a kid flood
costing at most one fetch per cooldown, and a stalled JWKS endpoint blocking nothing."""
from __future__ import annotations

import http.client
import http.server
import json
import threading
import time
from collections.abc import Iterator
from typing import Any

import jwt
import pytest

from tests.security.tokens import claims, rsa_keypair
from tests.support.gateway_proc import GatewayProcess, UpstreamProcess, wait_until


class Jwks:
    """A real local JWKS server (a thread): serves `doc`, counts hits, can stall."""

    def __init__(self) -> None:
        self.doc: dict[str, Any] = {"keys": []}
        self.hits = 0
        self.stall = threading.Event()
        owner = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                owner.hits += 1
                if owner.stall.is_set():
                    time.sleep(8)
                body = json.dumps(owner.doc).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/jwks"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def jwk(key: Any, kid: str) -> dict[str, Any]:
    d = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(key.public_key()))
    d.update(kid=kid, use="sig", alg="RS256")
    return d


def status(port: int, token: str) -> int:
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        c.request("GET", "/api/x", headers={"Authorization": f"Bearer {token}"})
        r = c.getresponse()
        r.read()
        return r.status
    finally:
        c.close()


@pytest.fixture
def setup() -> Iterator[tuple[Jwks, UpstreamProcess]]:
    j = Jwks()
    up = UpstreamProcess()
    yield j, up
    up.stop()
    j.close()


def test_jwks_rotation_flood_and_stall(setup: tuple[Jwks, UpstreamProcess]) -> None:
    j, up = setup
    k1, k2 = rsa_keypair()[0], rsa_keypair()[0]
    j.doc = {"keys": [jwk(k1, "k1")]}
    config = f"""
[[services]]
name = "up"
targets = [{{ url = "{up.url}" }}]
[[routes]]
name = "api"
path = "/api"
service = "up"
auth = ["jwt"]
"""
    t1 = jwt.encode(claims(), k1, algorithm="RS256", headers={"kid": "k1"})
    t2 = jwt.encode(claims(), k2, algorithm="RS256", headers={"kid": "k2"})
    with GatewayProcess(config, env={"GATEWAY_JWT_JWKS_URL": j.url, "GATEWAY_AUDIT_LOG": "off"}) as gw:
        wait_until(lambda: status(gw.port, t1) == 200, 10)
        # Rotation: k2 published, k1 dropped. The first k2 token may be refused (no wait for the
        # fetch); within the 10 s cooldown plus a margin k2 is in and k1 refused.
        j.doc = {"keys": [jwk(k2, "k2")]}
        t0 = time.monotonic()
        wait_until(lambda: status(gw.port, t2) == 200, 20, interval=0.5)
        assert time.monotonic() - t0 < 15
        assert status(gw.port, t1) == 401
        # A flood of random kids: at most one fetch per 10 s cooldown (plus the periodic one).
        hits = j.hits
        t0 = time.monotonic()
        for i in range(200):
            forged = jwt.encode(claims(), k1, algorithm="RS256", headers={"kid": f"rnd-{i}"})
            assert status(gw.port, forged) == 401
        elapsed = time.monotonic() - t0
        assert j.hits - hits <= 1 + int(elapsed // 10), (j.hits - hits, elapsed)
        # The endpoint stalls: requests with known keys are still answered at once.
        j.stall.set()
        time.sleep(10.5)                      # past the cooldown
        forged = jwt.encode(claims(), k1, algorithm="RS256", headers={"kid": "trigger"})
        assert status(gw.port, forged) == 401  # triggers a fetch that hangs
        t0 = time.monotonic()
        for _ in range(20):
            assert status(gw.port, t2) == 200
        assert time.monotonic() - t0 < 5
        j.stall.clear()
