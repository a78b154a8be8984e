"""Exact request framing over real sockets (issue 7, B1-B4): the real `gateway` in front of the echo
upstream, each request sent in one write and one byte per TCP segment. Over sockets the upstream
connection is made on a later loop turn, which the fake transports of tests/http never show."""
from __future__ import annotations

import hashlib
import json
import socket
import time

import pytest

from tests.integration.test_proxy_wire import Conn, gw  # noqa: F401 - gw is the module's gateway fixture
from tests.support.gateway_proc import GatewayProcess

NEXT = b"GET /next HTTP/1.1\r\nHost: a\r\n\r\n"


def send(c: Conn, data: bytes, bytewise: bool) -> None:
    if not bytewise:
        c.send(data)
        return
    c.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    for i in range(len(data)):
        try:
            c.sock.send(data[i:i + 1])
        except OSError:  # the gateway closed the connection on a refusal: that is the answer
            return
        if i % 16 == 0:
            time.sleep(0.0005)  # (lets some reads hold a single byte)


@pytest.mark.parametrize("bytewise", [False, True], ids=["whole", "bytewise"])
def test_chunked_with_trailing_tab_is_decoded(gw: GatewayProcess, bytewise: bool) -> None:  # noqa: F811
    c = Conn(gw.port)
    try:
        send(c, b"POST /c HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\t\r\n\r\n"
                b"3;x=\"y\"\r\nabc\r\n2\r\nde\r\n0\r\nX-T: 1\r\n\r\n" + NEXT, bytewise)
        status, _, out = c.response()
        e = json.loads(out)
        assert status == 200 and e["body_length"] == 5
        assert e["body_sha256"] == hashlib.sha256(b"abcde").hexdigest()
        assert [v for n, v in e["headers"] if n.lower() == "transfer-encoding"] == ["chunked"]
        status, _, out = c.response()
        assert status == 200 and json.loads(out)["target"] == "/next"
    finally:
        c.close()


@pytest.mark.parametrize("bytewise", [False, True], ids=["whole", "bytewise"])
@pytest.mark.parametrize("body,status", [
    (b"FFFFFFFFFFFFFFFF\r\nabc\r\n0\r\n\r\n", 413),
    (b"3;e=" + b"v" * 5000 + b"\r\nabc\r\n0\r\n\r\n", 400),
], ids=["chunk-size-overflow", "chunk-extension-too-long"])
def test_chunk_line_refused_and_connection_closed(gw: GatewayProcess, body: bytes, status: int,  # noqa: F811
                                                  bytewise: bool) -> None:
    c = Conn(gw.port)
    try:
        send(c, b"POST /c HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n" + body + NEXT, bytewise)
        got, headers, out = c.response()
        assert got == status and json.loads(out)["request_id"] == headers["x-request-id"]
        assert c.closed_by_peer()  # and /next was never answered
    finally:
        c.close()
