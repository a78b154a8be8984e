"""`gateway demo`: serves with no files and no Redis, and every curl line it prints works."""
from __future__ import annotations

import json
import signal
import socket
import subprocess

from tests.support.gateway_proc import (  # noqa: F401 - gateway is a fixture
    gateway,
    wait_until,
)


def printed_curl_lines(stdout: str) -> list[str]:
    return [line.strip() for line in stdout.splitlines() if line.strip().startswith("curl ")]


def test_demo_serves_and_its_curl_lines_work(gateway) -> None:  # noqa: F811
    gw = gateway(None, args=("demo",), env={"GATEWAY_CONFIG": "/nonexistent/ignored.toml"})
    wait_until(lambda: "Ctrl-C stops it" in gw.stdout)
    lines = printed_curl_lines(gw.stdout)
    assert len(lines) >= 8, gw.stdout
    results: dict[str, str] = {}
    for line in lines:
        # The lines are meant to be pasted into a shell: run them through one.
        p = subprocess.run(["bash", "-c", line + " --max-time 10"], capture_output=True, text=True, timeout=20)
        assert p.returncode == 0, (line, p.stderr)
        assert p.stdout, line
        results[line] = p.stdout
    by_path = {line.split()[-1].strip("'"): out for line, out in results.items() if " -i " not in line}
    port = gw.port
    assert "Ada Lovelace" in by_path[f"http://127.0.0.1:{port}/users"]
    assert json.loads(by_path[f"http://127.0.0.1:{port}/users/2"])["name"] == "Alan Turing"
    assert json.loads(by_path[f"http://127.0.0.1:{port}/api/users/1"])["name"] == "Ada Lovelace"
    echo = json.loads(by_path[f"http://127.0.0.1:{port}/echo?hello=world"])
    assert echo["query"] == "hello=world"
    created = [out for line, out in results.items() if "-X POST" in line]
    assert json.loads(created[0])["item"] == "difference engine"
    nowhere = next(out for line, out in results.items() if line.endswith("/nowhere"))
    assert nowhere.startswith("HTTP/1.1 404")
    delete = next(out for line, out in results.items() if "-X DELETE" in line)
    assert delete.startswith("HTTP/1.1 405") and "allow: get" in delete.lower()
    # The auth lines: no credential 401, the minted JWT and the created key admit, the key buys tokens.
    assert next(out for line, out in results.items() if line.endswith("/secure/users")).startswith("HTTP/1.1 401")
    assert json.loads(next(out for line, out in results.items() if "Bearer" in line))["name"] == "Ada Lovelace"
    assert json.loads(next(out for line, out in results.items() if "X-API-Key" in line and "/secure/" in line))[
        "name"] == "Alan Turing"
    pair = json.loads(next(out for line, out in results.items() if line.endswith("/auth/token")))
    assert pair["token_type"] == "Bearer" and pair["access_token"] and pair["refresh_token"]
    health = next(out for line, out in results.items() if line.endswith("/health"))
    assert json.loads(health)["status"] == "ok"
    assert "GATEWAY_CONFIG=/nonexistent/ignored.toml is ignored" in gw.stderr
    # Ctrl-C stops it cleanly.
    assert gw.stop(signal.SIGINT, timeout=15) == 0
    assert "Traceback" not in gw.stderr


def test_demo_port_taken_is_one_clear_line(gateway) -> None:  # noqa: F811
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen(1)
        port = holder.getsockname()[1]
        gw = gateway(None, args=("demo",), env={"GATEWAY_PORT": str(port)}, wait=False)
        code = gw.wait(20)
    assert code == 1
    lines = gw.stderr.strip().splitlines()
    assert "GATEWAY_PORT" in lines[-1] and "address already in use" in lines[-1]
    assert "Traceback" not in gw.stderr
