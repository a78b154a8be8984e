"""llstate.pyx reads httptools' answers (method, status, keep-alive, upgrade) from llhttp's state:
on generated heads, every answer the data plane reads must be the getter's."""
from __future__ import annotations

import itertools
import random

import httptools

from gateway.http import llstate

METHODS = [b"GET", b"HEAD", b"POST", b"PUT", b"DELETE", b"OPTIONS", b"PATCH", b"CONNECT", b"TRACE", b"PURGE"]
VERSIONS = [b"1.1", b"1.0"]
CONNECTION = [None, b"close", b"keep-alive", b"Close", b"KEEP-ALIVE", b"upgrade", b"close, upgrade",
              b"keep-alive, close", b"foo"]
FRAMING = [None, b"Content-Length: 0", b"Content-Length: 5", b"Transfer-Encoding: chunked",
           b"Transfer-Encoding: gzip, chunked"]
STATUSES = [100, 101, 200, 201, 204, 206, 301, 304, 400, 404, 500, 502, 503]


def _body(framing: bytes | None) -> bytes:
    if framing is None or framing.endswith(b" 0"):
        return b""
    if framing.startswith(b"Content-Length"):
        return b"hello"
    return b"5\r\nhello\r\n0\r\n\r\n"


def _head(first: bytes, connection: bytes | None, framing: bytes | None, upgrade: bool) -> bytes:
    lines = [first, b"Host: example.test"]
    if connection is not None:
        lines.append(b"Connection: " + connection)
    if upgrade:
        lines.append(b"Upgrade: websocket")
    if framing is not None:
        lines.append(framing)
    return b"\r\n".join(lines) + b"\r\n\r\n" + _body(framing)


def test_direct_reads_are_on_for_the_pinned_httptools() -> None:
    # If this fails, httptools bundles an llhttp whose state is laid out differently: the data
    # plane then asks the getters (correct, slower); llstate.pyx's struct needs the new layout.
    assert llstate.DIRECT, f"httptools {httptools.__version__}: llstate.pyx reads its llhttp wrongly"


def test_requests_every_combination() -> None:
    heads = [
        _head(m + b" /p HTTP/" + v, c, f, u)
        for m, v, c, f, u in itertools.product(METHODS, VERSIONS, CONNECTION, FRAMING, [False, True])
        if m != b"CONNECT"
    ]
    assert llstate.disagreements(heads, False) == []


def test_responses_every_combination() -> None:
    heads = [
        _head(b"HTTP/" + v + b" %d X" % s, c, f if s not in (204, 304) and s >= 200 else None, False)
        for v, s, c, f in itertools.product(VERSIONS, STATUSES, CONNECTION, FRAMING)
    ]
    assert llstate.disagreements(heads, True) == []


def test_random_pipelines_on_one_parser() -> None:
    # Several messages on one parser (keep-alive): the state read is each message's own.
    rng = random.Random(7)
    for _ in range(200):
        probe = llstate._Probe(False)   # records (direct answers, getters' answers) per callback
        probe.parser = httptools.HttpRequestParser(probe)
        stream = b"".join(
            _head(rng.choice([b"GET", b"POST", b"PUT", b"DELETE"]) + b" / HTTP/1.1",
                  rng.choice([None, b"keep-alive", b"foo"]), rng.choice(FRAMING[:3]), False)
            for _ in range(rng.randint(1, 5)))
        probe.parser.feed_data(stream)
        assert probe.seen and all(direct == slow for direct, slow in probe.seen)


def test_the_method_is_one_shared_bytes_object_per_method() -> None:
    got = []

    class Probe:
        def on_headers_complete(self) -> None:
            got.append(llstate.verdicts(parser, False)[0])

    parser = httptools.HttpRequestParser(Probe())
    parser.feed_data(b"GET / HTTP/1.1\r\nHost: a\r\n\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n"
                     b"DELETE / HTTP/1.1\r\nHost: a\r\n\r\n")
    assert got == [b"GET", b"GET", b"DELETE"] and got[0] is got[1]
