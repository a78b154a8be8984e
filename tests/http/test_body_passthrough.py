"""Response bodies passed on without copies (issue 17): reads into the worker's shared buffer
(get_buffer/buffer_updated), a Content-Length body or the inside of a chunk written from it, and
the buffer given away when the client's transport keeps a view of it (uvloop does not copy what it
cannot send at once). Every split of the bytes gives the same output; nothing outside a chunk's
data (sizes, extensions, trailers, a trailer that looks like a Content-Length) is ever passed."""
from __future__ import annotations

import random
from typing import Any

import pytest

from tests.http import harness
from tests.http.harness import FakeTransport, Harness

BODY = random.Random(3).randbytes(300_000)


class ViewKeepingTransport(FakeTransport):
    """A transport that, while `blocked`, keeps what it is given as views (uvloop's way: no copy)
    and reports them as its write buffer; flush() sends them."""

    def __init__(self, *a: Any, **kw: Any) -> None:
        super().__init__(*a, **kw)
        self.kept: list[memoryview] = []
        self.kept_size = 0
        self.blocked = False
        self.writes = 0

    def write(self, data: Any) -> None:  # type: ignore[override]
        assert not self.closed, "write after close"
        self.writes += 1
        if self.blocked or self.kept:
            self.kept.append(memoryview(data))
            self.kept_size += len(data)
        else:
            self.written += data

    def writelines(self, parts: Any) -> None:  # type: ignore[override]
        for p in parts:
            self.write(p)
        self.writes -= len(parts) - 1   # one writev

    def get_write_buffer_size(self) -> int:
        return self.kept_size

    def flush(self) -> None:
        for v in self.kept:
            self.written += v
        self.kept.clear()
        self.kept_size = 0


@pytest.fixture
def h(monkeypatch: pytest.MonkeyPatch) -> Any:
    monkeypatch.setattr(harness, "FakeTransport", ViewKeepingTransport)
    hh = Harness()
    yield hh
    hh.close()


def read_into(up: Any, data: bytes, sizes: list[int]) -> None:
    """Deliver data as uvloop does for a BufferedProtocol: into get_buffer's buffer, then buffer_updated."""
    pos, i = 0, 0
    while pos < len(data):
        buf = up.get_buffer(-1)
        n = min(len(buf), sizes[i % len(sizes)], len(data) - pos)
        i += 1
        buf[:n] = data[pos:pos + n]
        up.buffer_updated(n)
        pos += n


def chunked(body: bytes, sizes: list[int], trailer: bytes = b"") -> bytes:
    out, pos, i = [], 0, 0
    while pos < len(body):
        n = min(sizes[i % len(sizes)], len(body) - pos)
        out.append(b"%x;ext=%d\r\n%s\r\n" % (n, i, body[pos:pos + n]))
        pos += n
        i += 1
    return b"".join(out) + b"0\r\n" + trailer + b"\r\n"


def dechunk(data: bytes) -> tuple[bytes, bytes]:
    """(body, rest) of a chunked body at the start of data."""
    out, pos = [], 0
    while True:
        end = data.index(b"\r\n", pos)
        n = int(data[pos:end], 16)
        pos = end + 2
        if n == 0:
            assert data[pos:pos + 2] == b"\r\n", "the gateway sends no trailers"
            return b"".join(out), data[pos + 2:]
        out.append(data[pos:pos + n])
        assert data[pos + n:pos + n + 2] == b"\r\n"
        pos += n + 2


def split_head(data: bytes) -> tuple[bytes, bytes]:
    i = data.index(b"\r\n\r\n") + 4
    return data[:i], data[i:]


SPLITS = [[1 << 20], [1, 2, 3, 4096], [7, 1000, 65536, 3], [65536], [4096, 17]]


@pytest.mark.parametrize("sizes", SPLITS)
@pytest.mark.parametrize("block_at", [None, 0.0, 0.5])
def test_content_length_body_exact_whatever_the_reads(h: Any, sizes: list[int], block_at: float | None) -> None:
    h.feed(b"GET /x HTTP/1.1\r\nHost: a\r\n\r\n")
    up = h.up()
    head = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(BODY)
    data = head + BODY
    if block_at is None:
        read_into(up, data, sizes)
    else:
        cut = len(head) + int(len(BODY) * block_at)
        read_into(up, data[:cut], sizes)
        h.down.blocked = True          # the client stops reading: views are kept, not copies
        read_into(up, data[cut:], sizes)
        h.down.blocked = False
        h.down.flush()
    out_head, out_body = split_head(h.down.take())
    assert out_head.startswith(b"HTTP/1.1 200 OK\r\n") and b"content-length: %d" % len(BODY) in out_head.lower()
    assert out_body == BODY
    assert up.reusable()


@pytest.mark.parametrize("sizes", SPLITS)
@pytest.mark.parametrize("version", [b"1.1", b"1.0"])
def test_chunked_body_exact_and_nothing_but_chunk_data_passes(h: Any, sizes: list[int], version: bytes) -> None:
    # A trailer section (dropped: never passed) and chunks of every size around the read sizes.
    # (A Content-Length trailer is refused by llhttp: the exchange fails, tested elsewhere.)
    h.feed(b"GET /x HTTP/%s\r\nHost: a\r\n\r\n" % version)
    up = h.up()
    data = (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
            + chunked(BODY, [1, 65536, 5, 100_000, 3000], b"X-Content-Length: 99999999\r\nX-T: 1\r\n"))
    read_into(up, data[:70_000], sizes)
    h.down.blocked = True
    read_into(up, data[70_000:], sizes)
    h.down.blocked = False
    h.down.flush()
    out_head, rest = split_head(h.down.take())
    if version == b"1.1":
        body, rest = dechunk(rest)
        assert rest == b""
    else:
        body = rest   # HTTP/1.0: de-chunked, delimited by the close
    assert body == BODY


def test_chunked_bytewise_through_data_received(h: Any) -> None:
    """The plain-bytes path (a TLS transport) passes chunk data the same way."""
    h.feed(b"GET /x HTTP/1.1\r\nHost: a\r\n\r\n")
    up = h.up()
    body = BODY[:3000]
    data = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + chunked(body, [1000, 1, 1999], b"X-Length: 50\r\n")
    for i in range(len(data)):
        up.data_received(data[i:i + 1])
    _, rest = split_head(h.down.take())
    got, rest = dechunk(rest)
    assert got == body and rest == b""
    assert up.reusable()


def test_a_kept_buffer_is_never_read_into_again(h: Any) -> None:
    """While the client's transport keeps a view of the read buffer, the next read gets another."""
    h.feed(b"GET /x HTTP/1.1\r\nHost: a\r\n\r\n")
    up = h.up()
    read_into(up, b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(BODY), [1 << 20])
    h.down.blocked = True
    first = up.get_buffer(-1)
    first[:1000] = BODY[:1000]
    up.buffer_updated(1000)
    assert h.down.get_write_buffer_size() == 1000
    second = up.get_buffer(-1)
    assert second.obj is not first.obj
    assert len(second) <= 65536, "a small read while the client is behind"


@pytest.mark.parametrize("body", [b"x" * 10, b"y" * 100_000])
@pytest.mark.parametrize("framing", ["sized", "chunked"])
def test_request_head_and_body_in_one_read_leave_in_one_write(h: Any, body: bytes, framing: str) -> None:
    """A POST whose body came with its head: one write upstream (head and body), not two."""
    if framing == "sized":
        req = b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)
        expect = body
    else:
        req = b"POST /x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n%x\r\n%s\r\n0\r\n\r\n" % (len(body), body)
        expect = b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body)
    h.feed(req)
    t = h.up().transport
    sent = h.upstream_bytes()
    assert sent.endswith(b"\r\n\r\n" + expect) and sent.startswith(b"POST /x HTTP/1.1\r\n")
    # (the chunked body's last chunk is its own write: it follows the body's end)
    assert t.writes == (1 if framing == "sized" else 2)


def test_request_head_waits_only_for_the_turn(h: Any) -> None:
    """A head whose body has not come yet is not held past the read: the upstream sees it now."""
    h.feed(b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\n")
    assert h.upstream_bytes().startswith(b"POST /x HTTP/1.1\r\n")
    h.feed(b"hello")
    assert h.upstream_bytes().endswith(b"\r\n\r\nhello")


def test_a_queued_chunked_body_in_one_read_is_held_at_its_bound() -> None:
    """Inside a chunk's data a read is one slice (no scan for heads), but a queued request's
    chunked body still stops at the buffer bound, the rest of the read kept unparsed."""
    from gateway.http import downstream
    from tests.http.harness import statuses

    hh = Harness()
    try:
        body = bytes(range(256)) * 800  # 204,800 bytes in one chunk
        hh.feed(b"GET /x HTTP/1.1\r\nHost: a\r\n\r\n"
                + b"POST /submit HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
                + b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body))
        assert not hh.down.reading and len(hh.proto.queue) == 1
        assert len(hh.proto.p_rest) >= len(body) - downstream.MAX_BUFFERED_BODY - 1
        ok = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"
        hh.respond(ok)
        hh.spin()
        assert hh.upstream_bytes().endswith(b"\r\n0\r\n\r\n") and hh.down.reading
        hb = hh.all_upstream_bytes()
        sent = hb[hb.index(b"POST /submit"):].split(b"\r\n\r\n", 1)[1]
        got = []
        while True:   # the gateway re-frames: collect the chunk data
            n, _, sent = sent.partition(b"\r\n")
            size = int(n, 16)
            if size == 0:
                break
            got.append(sent[:size])
            sent = sent[size + 2:]
        assert b"".join(got) == body
        hh.respond(ok)
        assert statuses(hh.down.take()) == [200, 200]
    finally:
        hh.close()
