"""Route `json_check` (+ `json_max_bytes`) through a real gateway and the echo upstream: the body of
a JSON request is held (bounded) until it parses, then forwarded unchanged; malformed → 400 with
SPEC §4's error body and an audit record, over the cap → 413, nothing forwarded either way; the
data plane's bounds hold (a client sending one byte at a time, one that stalls, pipelining)."""
from __future__ import annotations

import hashlib
import json
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from gateway.config import loads_config
from gateway.config.errors import ConfigErrors
from tests.support.gateway_proc import GatewayProcess, UpstreamProcess, wait_until

CAP = 1024


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    up = UpstreamProcess()
    audit = tmp_path_factory.mktemp("audit") / "audit.log"
    config = f"""
[[services]]
name = "up"
targets = [{{ url = "{up.url}" }}]
[[routes]]
name = "json"
path = "/json"
service = "up"
json_check = true
json_max_bytes = {CAP}
[[routes]]
name = "open"
path = "/"
service = "up"
"""
    g = GatewayProcess(config, env={"GATEWAY_AUDIT_LOG": str(audit), "GATEWAY_BODY_TIMEOUT": "1"})
    g.audit_path = audit  # type: ignore[attr-defined]
    try:
        yield g
    finally:
        g.kill()
        up.stop()


def raw(port: int, data: bytes | list[bytes], *, pause: float = 0.0, read_until_close: bool = True,
        timeout: float = 10.0) -> bytes:
    """Send data (a list: one send per piece, `pause` between), read until the gateway closes (or
    a full response when read_until_close is False)."""
    s = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    try:
        for piece in data if isinstance(data, list) else [data]:
            s.sendall(piece)
            if pause:
                time.sleep(pause)
        out = b""
        while True:
            try:
                chunk = s.recv(65536)
            except (ConnectionResetError, TimeoutError):
                break
            if not chunk:
                break
            out += chunk
            if not read_until_close and _complete(out):
                break
        return out
    finally:
        s.close()


def _complete(out: bytes) -> bool:
    head, sep, body = out.partition(b"\r\n\r\n")
    if not sep:
        return False
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            return len(body) >= int(line.split(b":")[1])
    return False


def responses(out: bytes) -> list[tuple[int, dict[str, str], Any]]:
    """Parse the (Content-Length framed) responses in out."""
    got = []
    while out:
        head, _, rest = out.partition(b"\r\n\r\n")
        lines = head.split(b"\r\n")
        headers = {k.strip().lower().decode(): v.strip().decode()
                   for k, v in (line.split(b":", 1) for line in lines[1:])}
        n = int(headers.get("content-length", "0"))
        body, out = rest[:n], rest[n:]
        got.append((int(lines[0].split()[1]), headers, json.loads(body) if body else None))
    return got


def post(path: str, body: bytes, ctype: str = "application/json", extra: str = "", close: bool = True) -> bytes:
    conn = "Connection: close\r\n" if close else ""
    return (f"POST {path} HTTP/1.1\r\nHost: t\r\nContent-Type: {ctype}\r\nContent-Length: {len(body)}\r\n"
            f"{extra}{conn}\r\n").encode() + body


def chunked_head(path: str, ctype: str = "application/json") -> bytes:
    return (f"POST {path} HTTP/1.1\r\nHost: t\r\nContent-Type: {ctype}\r\nTransfer-Encoding: chunked\r\n"
            "Connection: close\r\n\r\n").encode()


def total(port: int) -> int:
    (status, _, echo), = responses(raw(port, b"GET /count HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"))
    return int(echo["total"])


def audit_records(g: GatewayProcess) -> list[dict[str, Any]]:
    path: Path = g.audit_path  # type: ignore[attr-defined]
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def rejected(g: GatewayProcess, request_id: str) -> dict[str, Any] | None:
    for r in audit_records(g):
        if r["event"] == "request_rejected" and r["request_id"] == request_id:
            return r
    return None


VALID_BODY = json.dumps({"name": "alice", "tags": ["a", "b"], "n": 1.5, "nested": {"ok": True}}).encode()


def test_well_formed_json_is_forwarded_unchanged(gw: GatewayProcess) -> None:
    for ctype in ("application/json", "application/json; charset=utf-8", "application/problem+json"):
        (status, _, echo), = responses(raw(gw.port, post("/json/x", VALID_BODY, ctype)))
        assert status == 200 and echo["body_length"] == len(VALID_BODY)
        assert echo["body_sha256"] == hashlib.sha256(VALID_BODY).hexdigest()


@pytest.mark.parametrize("body", [b'{"a": 1', b"{'a': 1}", b'{"a": 1} trailing', b'\xff\xfe{"a":1}', b"NaN",
                                  b'{"a": 1,}'])
def test_malformed_json_is_400_with_an_audit_record_and_nothing_forwarded(gw: GatewayProcess, body: bytes) -> None:
    before = total(gw.port)
    (status, headers, err), = responses(raw(gw.port, post("/json/x", body, close=False)))
    assert status == 400 and headers["content-type"] == "application/json"
    assert err["error"] == "malformed_json" and err["request_id"] == headers["x-request-id"] and err["message"]
    assert total(gw.port) == before + 1          # only the /count request itself
    wait_until(lambda: rejected(gw, err["request_id"]) is not None, 5)
    record = rejected(gw, err["request_id"])
    assert record["route"] == "json" and record["details"] == {"status": 400, "reason": "malformed_json"}


def test_content_length_over_the_cap_is_413_before_the_body_is_read(gw: GatewayProcess) -> None:
    before = total(gw.port)
    body = b'{"pad": "' + b"x" * CAP + b'"}'
    (status, headers, err), = responses(raw(gw.port, post("/json/x", body)))
    assert status == 413 and err["error"] == "payload_too_large"
    assert total(gw.port) == before + 1
    wait_until(lambda: rejected(gw, err["request_id"]) is not None, 5)
    assert rejected(gw, err["request_id"])["details"]["reason"] == "json_too_large"
    # With Expect: 100-continue the client is refused before it sends the body (no 100 first).
    head = post("/json/x", body, extra="Expect: 100-continue\r\n")[:-len(body)]
    out = raw(gw.port, head)
    assert out.startswith(b"HTTP/1.1 413 ") and b"100 Continue" not in out
    # At the cap exactly: accepted.
    exact = b'"' + b"y" * (CAP - 2) + b'"'
    (status, _, echo), = responses(raw(gw.port, post("/json/x", exact)))
    assert status == 200 and echo["body_length"] == CAP


def test_expect_100_continue_gets_its_100_then_the_body_is_checked(gw: GatewayProcess) -> None:
    s = socket.create_connection(("127.0.0.1", gw.port), timeout=10)
    try:
        s.sendall(post("/json/x", VALID_BODY, extra="Expect: 100-continue\r\n")[:-len(VALID_BODY)])
        assert s.recv(100).startswith(b"HTTP/1.1 100 Continue\r\n\r\n")
        s.sendall(VALID_BODY)
        out = b""
        while not _complete(out):
            out += s.recv(65536)
    finally:
        s.close()
    (status, _, echo), = responses(out)
    assert status == 200 and echo["body_sha256"] == hashlib.sha256(VALID_BODY).hexdigest()


def test_chunked_bodies_are_checked_and_forwarded_or_refused_when_crossing_the_cap(gw: GatewayProcess) -> None:
    pieces = [VALID_BODY[:7], VALID_BODY[7:20], VALID_BODY[20:]]
    chunks = b"".join(b"%x;ext=1\r\n%s\r\n" % (len(p), p) for p in pieces) + b"0\r\nTrailer: x\r\n\r\n"
    (status, _, echo), = responses(raw(gw.port, chunked_head("/json/x") + chunks))
    assert status == 200 and echo["body_length"] == len(VALID_BODY)
    assert echo["body_sha256"] == hashlib.sha256(VALID_BODY).hexdigest()
    before = total(gw.port)
    (status, _, err), = responses(raw(gw.port, chunked_head("/json/x") + b"5\r\n{\"a\":\r\n0\r\n\r\n"))
    assert status == 400 and err["error"] == "malformed_json"
    # 600 + 600 bytes: refused as the second chunk crosses 1024, the rest never needed.
    big = b"258\r\n" + b" " * 600 + b"\r\n"
    out = raw(gw.port, [chunked_head("/json/x") + big, big], pause=0.1)
    (status, _, err), = responses(out)
    assert status == 413 and err["error"] == "payload_too_large"
    assert total(gw.port) == before + 1


def test_other_content_types_and_routes_without_the_key_are_not_checked(gw: GatewayProcess) -> None:
    (status, _, echo), = responses(raw(gw.port, post("/json/x", b"{not json", "text/plain")))
    assert status == 200 and echo["body_length"] == 9
    (status, _, echo), = responses(raw(gw.port, post("/elsewhere", b"{not json")))
    assert status == 200 and echo["body_length"] == 9
    big = b"[" + b"1," * 5000 + b"1]"         # over the json route's cap, but not its route
    (status, _, echo), = responses(raw(gw.port, post("/elsewhere", big)))
    assert status == 200 and echo["body_length"] == len(big)


def test_a_client_sending_one_byte_at_a_time_is_held_bounded_and_others_are_served(gw: GatewayProcess) -> None:
    import threading

    body = json.dumps({"k": "v" * 40}).encode()
    result: dict[str, bytes] = {}

    def hostile() -> None:
        data = post("/json/x", body)
        result["out"] = raw(gw.port, [data[i:i + 1] for i in range(len(data))], pause=0.002)

    t = threading.Thread(target=hostile)
    t.start()
    try:
        # Meanwhile the gateway answers others at once.
        for _ in range(5):
            t0 = time.monotonic()
            (status, _, _), = responses(raw(gw.port, post("/json/y", b"{}")))
            assert status == 200 and time.monotonic() - t0 < 1.0
    finally:
        t.join(30)
    (status, _, echo), = responses(result["out"])
    assert status == 200 and echo["body_sha256"] == hashlib.sha256(body).hexdigest()
    # One byte a chunk, past the cap: refused as soon as it is crossed, nothing forwarded.
    before = total(gw.port)
    one = [chunked_head("/json/x")] + [b"1\r\n \r\n"] * (CAP + 50)
    out = raw(gw.port, one[:1] + [b"".join(one[1:CAP - 1])] + one[CAP - 1:], pause=0.0)
    (status, _, err), = responses(out)
    assert status == 413 and err["error"] == "payload_too_large"
    assert total(gw.port) == before + 1


def test_a_client_that_stalls_mid_body_gets_408_and_nothing_is_forwarded(gw: GatewayProcess) -> None:
    before = total(gw.port)
    data = post("/json/x", VALID_BODY)
    t0 = time.monotonic()
    out = raw(gw.port, data[:-5])          # never sends the last 5 bytes; GATEWAY_BODY_TIMEOUT=1
    (status, _, err), = responses(out)
    assert status == 408 and 0.4 < time.monotonic() - t0 < 5   # (the ticker is coarse: 0.5 s)
    assert total(gw.port) == before + 1


def test_pipelined_json_requests_are_answered_in_order(gw: GatewayProcess) -> None:
    before = total(gw.port)
    data = (post("/json/a", VALID_BODY, close=False) + post("/json/b", b"[1, 2]", close=False)
            + post("/json/c", b"[1, 2", close=False) + post("/json/d", b"{}"))
    got = responses(raw(gw.port, data))
    assert [g[0] for g in got] == [200, 200, 400]            # the 400 closes: /json/d is never read
    assert got[0][2]["body_length"] == len(VALID_BODY) and got[1][2]["body_length"] == 6
    assert total(gw.port) == before + 3


def test_config_keys() -> None:
    svc = '[[services]]\nname = "up"\ntargets = [{ url = "http://127.0.0.1:9" }]\n'
    route = '[[routes]]\nname = "r"\npath = "/"\nservice = "up"\n'
    rc = loads_config(svc + route + "json_check = true\n", "gw.toml").routes[0]
    assert rc.json_check and rc.json_max_bytes == 65536
    assert loads_config(svc + route, "gw.toml").routes[0].json_check is False
    for extra, problem in [
        ("json_max_bytes = 100\n", "routes[0].json_max_bytes: needs json_check = true"),
        ("json_check = true\njson_max_bytes = 0\n", "routes[0].json_max_bytes: expected an integer 1-16777216"),
        ("json_check = \"yes\"\n", "routes[0].json_check: expected true or false"),
    ]:
        with pytest.raises(ConfigErrors) as info:
            loads_config(svc + route + extra, "gw.toml")
        assert any(problem in p for p in info.value.problems), info.value.problems


def test_the_check_itself() -> None:
    from gateway.security.hygiene import JsonBodyCheck

    check = JsonBodyCheck("r", 1 << 20)
    assert check.finish(_ctx(), b"[" * 1100 + b"]" * 1100).status == 400   # deeper than orjson's 1024 levels
    assert check.finish(_ctx(), b"[" * 100 + b"]" * 100) is None
    assert check.finish(_ctx(), b"") is None                                 # an empty chunked body
    assert check.begin(_ctx(ctype=b"application/vnd.api+json")) is True
    assert check.begin(_ctx(ctype=b"application/jsonp")) is False
    assert check.begin(_ctx(ctype=b"text/json")) is False
    assert check.begin(_ctx(length=0)) is False
    assert check.begin(_ctx(length=(1 << 20) + 1)).status == 413


def _ctx(ctype: bytes = b"application/json", length: int = 10) -> Any:
    from gateway.pipeline import RequestContext

    ctx = RequestContext()
    ctx.headers = [(b"content-type", ctype)]
    ctx.content_length = length
    ctx.request_id = b"rid"
    return ctx
