"""A verdict never depends on how the bytes arrive (issue 7, B2).

Every wire-table case (test_wire_tables.py) and the heads of issue 7, each followed by a pipelined
second request, is run four ways: in one write or one byte at a time, with the upstream connection
handed over at once or only after the bytes were read (as over real sockets, where connecting
takes a loop turn). All four must give the same statuses and the same complete requests upstream;
the two runs with an immediate connection must also give the same (decoded) prefix of a request
that was cut off, and a request cut off is never left on a live upstream connection.

Upstream bytes are compared decoded (head, body, complete) rather than raw: a chunked body is
re-framed per read, so its chunk boundaries legitimately follow the reads.
"""
from __future__ import annotations

import re
from typing import Any, NamedTuple

import httptools
import pytest

from tests.http.harness import OK, FakePool, Harness
from tests.http.test_wire_tables import FORWARDED, LIMITS, REJECTED

NEXT = b"GET /next HTTP/1.1\r\nHost: a\r\n\r\n"
CHUNKED = b"POST /submit HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"

# (id, request bytes): the heads issue 7 found segmentation-dependent, and the framing cases of B1-B4.
ISSUE_HEADS = [
    ("cl-space-before-colon", b"POST /submit HTTP/1.1\r\nHost: a\r\nContent-Length : 3\r\n\r\nabc"),
    ("te-ctl-in-name", b"POST /submit HTTP/1.1\r\nHost: a\r\nTransfer-Encoding\x04: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n"),
    ("line-starting-with-tab", b"POST /submit HTTP/1.1\r\nHost: a\r\n\tX: y\r\nContent-Length: 3\r\n\r\nabc"),
    ("ff-value-before-te", b"POST /submit HTTP/1.1\r\nHost: a\r\nX: X\x0c\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n"),
    ("te-trailing-space", b"POST /submit HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked \r\n\r\n3\r\nabc\r\n0\r\n\r\n"),
    ("te-trailing-space-then-header", b"POST /submit HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked \r\nX: y\r\n\r\n"
     b"3\r\nabc\r\n0\r\n\r\n"),
    ("te-nbsp", b"POST /submit HTTP/1.1\r\nHost: a\r\nTransfer-Encoding:\xa0chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n"),
    ("te-trailing-tab", b"POST /submit HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\t\r\n\r\n3\r\nabc\r\n0\r\n\r\n"),
    ("chunk-size-ffff", CHUNKED + b"FFFFFFFFFFFFFFFF\r\nabc\r\n0\r\n\r\n"),
    ("chunk-size-over-limit", CHUNKED + b"3\r\nabc\r\n3e6\r\n" + b"x" * 20 + b"\r\n0\r\n\r\n"),
    ("chunk-ext-huge", CHUNKED + b"3;e=" + b"v" * 20000 + b"\r\nabc\r\n0\r\n\r\n"),
    ("chunk-ext-huge-second", CHUNKED + b"3\r\nabc\r\n2;e=" + b"v" * 20000 + b"\r\nde\r\n0\r\n\r\n"),
    ("chunk-bad-after-data", CHUNKED + b"3\r\nabc\r\nzz\r\nxx\r\n0\r\n\r\n"),
    ("chunk-trailers", CHUNKED + b"3;a=\"q;\\\" q\"\r\nabc\r\n0\r\nX-T: 1\r\n\r\n"),
    ("chunk-empty-body", CHUNKED + b"0\r\n\r\n"),
    ("host-list", b"GET / HTTP/1.1\r\nHost: a,b\r\n\r\n"),
    ("backslash-path", b"GET /public\\..\\admin HTTP/1.1\r\nHost: a\r\n\r\n"),
    # Within the limits (LIMITS: target 128, head fields 512): the request line and the line ends
    # are not head-field bytes, so a raw count would refuse this head only when it arrives in pieces.
    ("head-at-the-limits", b"GET /" + b"u" * 120 + b" HTTP/1.1\r\nHost: a\r\nX-Big: " + b"b" * 490 + b"\r\n\r\n"),
    # Leading whitespace of a value is not part of it (llhttp drops it): same verdict both ways.
    ("long-ows", b"GET / HTTP/1.1\r\nHost: a\r\nX-Pad:" + b" " * 700 + b"v\r\n\r\n"),
]


class Run(NamedTuple):
    statuses: list[int]
    complete: list[tuple[bytes, bytes]]   # (normalized head, body) of each complete upstream request
    partial: list[tuple[bytes, bytes]]    # the same for requests cut off before their end
    closed: bool


_GENERATED = re.compile(rb"(X-Request-Id: |traceparent: )[^\r]*")
_STATUS = re.compile(rb"HTTP/1\.1 (\d{3}) ")


def statuses(out: bytes) -> list[int]:
    return [int(s) for s in _STATUS.findall(out)]  # (harness.statuses trips on "HTTP/1.1 are" in a 505 body)


def _requests(data: bytes) -> tuple[list[tuple[bytes, bytes]], tuple[bytes, bytes] | None]:
    """Decode the requests an upstream connection received: (complete ones, the unfinished one)."""
    done: list[tuple[bytes, bytes]] = []
    cur: dict[str, Any] = {}

    class P:
        def on_message_begin(self) -> None:
            cur.clear()
            cur.update(head=[], body=b"")

        def on_url(self, url: bytes) -> None:
            cur["url"] = cur.get("url", b"") + url

        def on_header(self, name: bytes, value: bytes) -> None:
            cur["head"].append(b"%s: %s" % (name, value))

        def on_body(self, body: bytes) -> None:
            cur["body"] += body

        def on_message_complete(self) -> None:
            done.append((_head(cur), cur["body"]))
            cur.clear()

    httptools.HttpRequestParser(P()).feed_data(data)
    return done, ((_head(cur), cur["body"]) if cur else None)


def _head(cur: dict[str, Any]) -> bytes:
    return _GENERATED.sub(rb"\1*", cur.get("url", b"") + b"\r\n" + b"\r\n".join(cur["head"]))


def run(raw: bytes, bytewise: bool, later: bool, **settings: Any) -> Run:
    h = Harness(**settings)
    pending: list[Any] = []
    if later:
        h.pool.connect = pending.append  # type: ignore[method-assign]

    def connect_pending() -> None:
        while pending:
            FakePool.connect(h.pool, pending.pop(0))

    data = raw + NEXT
    pieces = [data[i:i + 1] for i in range(len(data))] if bytewise else [data]
    for piece in pieces:
        if h.down.closed:
            break
        h.proto.data_received(piece)
        connect_pending()
    # The upstream answers each request once it has arrived whole, as a server would.
    answered: dict[int, int] = {}
    for _ in range(10):
        connect_pending()
        up = h.proto.a_up
        if up is None or up.transport.closed:  # type: ignore[attr-defined]
            break
        done, _ = _requests(bytes(up.transport.written))  # type: ignore[attr-defined]
        if len(done) <= answered.get(id(up), 0):
            break
        answered[id(up)] = answered.get(id(up), 0) + 1
        up.data_received(OK)
    complete: list[tuple[bytes, bytes]] = []
    partial: list[tuple[bytes, bytes]] = []
    for conn in h.pool.conns:
        done, cut = _requests(bytes(conn.transport.written))  # type: ignore[attr-defined]
        complete += done
        if cut is not None:
            partial.append(cut)
            assert conn.transport.aborted, "a request cut off was left on a live upstream connection"  # type: ignore[attr-defined]
    result = Run(statuses(h.down.take()), complete, partial, h.down.closed)
    h.close()
    return result


CASES = ([(f"rejected-{c[0]}", c[1], LIMITS) for c in REJECTED]
         + [(f"forwarded-{c[0]}", c[1], {}) for c in FORWARDED]
         + [(f"issue-{c[0]}", c[1], LIMITS) for c in ISSUE_HEADS])


@pytest.mark.parametrize("raw,settings", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_same_verdict_and_upstream_traffic_however_split(raw: bytes, settings: dict[str, Any]) -> None:
    base = run(raw, False, False, **settings)
    for bytewise, later in ((True, False), (False, True), (True, True)):
        got = run(raw, bytewise, later, **settings)
        how = f"bytewise={bytewise} connect_later={later}"
        assert got.statuses == base.statuses, how
        assert got.complete == base.complete, how
        assert got.closed == base.closed, how
        if not later:
            assert got.partial == base.partial, how
