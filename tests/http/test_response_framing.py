"""Response framing from a hostile upstream (issue 7, B7 and B8): what reaches the client never
changes meaning, whatever the upstream sends and however its bytes are split."""
from __future__ import annotations

import httptools
import pytest

from tests.http.harness import OK, Harness, status_of, statuses

GET = b"GET /x HTTP/1.1\r\nHost: a\r\n\r\n"
GET10 = b"GET /x HTTP/1.0\r\n\r\n"
EVIL = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nEVIL!"


def respond(h: Harness, data: bytes, bytewise: bool) -> None:
    if not bytewise:
        h.respond(data)
        return
    up = h.up()
    for i in range(len(data)):
        if up.transport.closed:  # type: ignore[attr-defined]
            break
        up.data_received(data[i:i + 1])


def body_of(response: bytes) -> bytes | None:
    """The decoded body of one complete response (None if it is not complete)."""
    got: list[bytes] = []
    done: list[bool] = []

    class P:
        def on_body(self, b: bytes) -> None:
            got.append(b)

        def on_message_complete(self) -> None:
            done.append(True)

    httptools.HttpResponseParser(P()).feed_data(response)
    return b"".join(got) if done else None


BOTH = pytest.mark.parametrize("bytewise", [False, True], ids=["whole", "bytewise"])

# A 1xx has no body (RFC 9110 §15.2): framing fields on one, or bytes after its head that are not
# the next head, are a protocol error. (id, upstream bytes)
BAD_INTERIM = [
    ("150-content-length", b"HTTP/1.1 150 X\r\nContent-Length: %d\r\n\r\n%s" % (len(EVIL), EVIL) + OK),
    ("199-chunked", b"HTTP/1.1 199 X\r\nTransfer-Encoding: chunked\r\n\r\n5\r\njunk!\r\n0\r\n\r\n" + OK),
    ("103-content-length-0", b"HTTP/1.1 103 Early Hints\r\nContent-Length: 0\r\n\r\n" + OK),
    ("100-transfer-encoding", b"HTTP/1.1 100 Continue\r\nTransfer-Encoding: chunked\r\n\r\n" + OK),
    ("1xx-then-junk", b"HTTP/1.1 100 Continue\r\n\r\nEVIL!" + OK),
]


@BOTH
@pytest.mark.parametrize("data", [c[1] for c in BAD_INTERIM], ids=[c[0] for c in BAD_INTERIM])
def test_interim_response_with_a_body_is_502_and_discarded(data: bytes, bytewise: bool) -> None:
    h = Harness()
    h.feed(GET)
    respond(h, data, bytewise)
    out = h.down.take()
    assert statuses(out) == [502], out
    assert b"EVIL" not in out and b"junk" not in out
    assert h.up().transport.aborted and h.pool.idle == []  # type: ignore[attr-defined]
    assert not h.down.closed  # nothing of a response went out: the client connection is still good
    h.close()


@BOTH
def test_plain_interim_responses_are_still_dropped(bytewise: bool) -> None:
    h = Harness()
    h.feed(GET)
    respond(h, b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n" + OK, bytewise)
    out = h.down.take()
    assert statuses(out) == [200] and out.endswith(b"\r\n\r\nok")
    assert h.pool.idle == [h.up()]
    h.close()


# Response transfer-codings (B8): the client never asked for any (its TE field is hop-by-hop and
# not forwarded) and an HTTP/1.0 client cannot take one, so only `chunked` itself is accepted, as
# nginx does; anything else is a 502 rather than bytes whose coding the client is not told about.
# (id, request, upstream bytes)
BAD_CODINGS = [
    ("gzip-chunked", GET, b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n3\r\n\x1f\x8b\x08\r\n0\r\n\r\n"),
    ("gzip-close-delimited", GET, b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n\x1f\x8b\x08"),
    ("gzip-chunked-http10-client", GET10, b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n3\r\n\x1f\x8b\x08\r\n0\r\n\r\n"),
    ("gzip-http10-client", GET10, b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n\x1f\x8b\x08"),
    ("two-te-fields", GET, b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\nTransfer-Encoding: chunked\r\n\r\n3\r\n\x1f\x8b\x08\r\n0\r\n\r\n"),
    ("unknown-coding", GET, b"HTTP/1.1 200 OK\r\nTransfer-Encoding: foo\r\n\r\nabc"),
    # llhttp decodes chunked only when nothing but spaces follow the token: with a tab it would
    # hand over the raw chunk framing as the body.
    ("chunked-tab", GET, b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\t\r\n\r\n3\r\nabc\r\n0\r\n\r\n"),
]


@BOTH
@pytest.mark.parametrize("req,data", [c[1:] for c in BAD_CODINGS], ids=[c[0] for c in BAD_CODINGS])
def test_transfer_codings_other_than_chunked_are_502(req: bytes, data: bytes, bytewise: bool) -> None:
    h = Harness()
    h.feed(req)
    respond(h, data, bytewise)
    if not h.up().transport.closed:  # type: ignore[attr-defined]
        h.up().connection_lost(None)  # (the end of a close-delimited body)
    out = h.down.take()
    assert statuses(out) == [502], out
    assert b"\x1f\x8b" not in out and b"abc" not in out
    assert h.up().transport.aborted and h.pool.idle == []  # type: ignore[attr-defined]
    h.close()


@BOTH
@pytest.mark.parametrize("te", [b"chunked", b"Chunked", b"chunked  ", b"CHUNKED"])
def test_chunked_response_in_any_spelling_llhttp_decodes(te: bytes, bytewise: bool) -> None:
    h = Harness()
    h.feed(GET)
    respond(h, b"HTTP/1.1 200 OK\r\nTransfer-Encoding: %s\r\n\r\n3\r\nabc\r\n0\r\n\r\n" % te, bytewise)
    out = h.down.take()
    assert status_of(out) == 200 and out.count(b"Transfer-Encoding: chunked\r\n") == 1
    assert body_of(out) == b"abc" and h.pool.idle == [h.up()]
    h.close()


def test_transfer_coding_on_a_response_without_body_is_not_forwarded() -> None:
    h = Harness()
    h.feed(b"HEAD /x HTTP/1.1\r\nHost: a\r\n\r\n")
    h.respond(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n")
    out = h.down.take()
    assert status_of(out) == 200 and b"gzip" not in out and b"Transfer-Encoding" not in out
    h.close()
