"""Response framing from a hostile upstream (issue 7, B7 and B8): what reaches the client never
changes meaning, whatever the upstream sends and however its bytes are split."""
from __future__ import annotations

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
