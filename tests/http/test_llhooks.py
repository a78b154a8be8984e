"""llhooks.pyx drives llhttp from C (its callbacks, llhttp_execute): on the wire tables' requests,
the segmentation heads, mutated chunked bodies and the framing responses, whole, one byte at a time
and in 7-byte pieces, with each callback in turn raising, every callback, argument, exception and
stop offset must be the ones httptools' own callbacks and feed_data give."""
from __future__ import annotations

import pytest

from gateway.http import llhooks
from tests.http.test_chunked_requests import BASES, MUTATIONS
from tests.http.test_response_framing import BAD_INTERIM
from tests.http.test_segmentation import ISSUE_HEADS
from tests.http.test_wire_tables import FORWARDED, REJECTED

STEPS = (0, 1, 7)
CHUNKED_HEAD = b"POST /c HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"


def _records(data: bytes, response: bool, raise_at: str | None = None, step: int = 0) -> tuple:
    slow, fast = llhooks.compare(data, response, raise_at, step)
    assert fast == slow
    return fast


def test_a_request_calls_each_callback_with_its_bytes() -> None:
    # The records compared below are the real ones (not two empty lists): what a hooked parser saw.
    events, outcome = _records(b"POST /x?y HTTP/1.1\r\nContent-Length: 3\r\n\r\nabcGET / HTTP/1.1\r\n\r\n", False)
    assert outcome is None
    assert events == [("begin", None), ("url", b"/x?y"), ("headers", (3, 0)), ("body", b"abc"),
                      ("complete", None), ("begin", None), ("url", b"/"), ("headers", (1, 0)),
                      ("complete", None)]


def test_a_chunked_response_calls_the_chunk_callbacks_with_their_sizes() -> None:
    events, outcome = _records(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n", True)
    assert outcome is None
    assert events == [("begin", None), ("headers", (0, 200)), ("chunk_header", 3), ("body", b"abc"), ("chunk_complete", None),
                      ("chunk_header", 0), ("chunk_complete", None), ("complete", None)]


def test_a_raising_callback_stops_llhttp_where_it_was_and_chains_its_exception() -> None:
    head = b"GET /x HTTP/1.1\r\nHost: a\r\n\r\n"
    events, outcome = _records(head + b"GET /y HTTP/1.1\r\n\r\n", False, "headers")
    assert events == [("begin", None), ("url", b"/x"), ("headers", (1, 0))]
    assert outcome == ("HttpParserCallbackError", None, "_Planted", len(head))


def test_an_upgrade_stops_after_its_head_with_the_offset() -> None:
    head = b"GET /ws HTTP/1.1\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n"
    events, outcome = _records(head + b"\x81\x05hello", False)
    assert outcome == ("HttpParserUpgrade", (len(head),), None, None)
    assert events[-2:] == [("headers", (1, 0)), ("complete", None)]   # (llhttp ends the message first)


@pytest.mark.parametrize(("data", "name"), [
    (b"G@T / HTTP/1.1\r\n\r\n", "HttpParserInvalidMethodError"),
    (b"GET /\x01 HTTP/1.1\r\n\r\n", "HttpParserInvalidURLError"),
    (b"GET / HTTP/1.1\r\nA B: c\r\n\r\n", "HttpParserError"),
])
def test_llhttp_errors_raise_httptools_classes(data: bytes, name: str) -> None:
    assert _records(data, False)[1][0] == name


def test_a_bad_status_raises_httptools_class() -> None:
    assert _records(b"HTTP/1.1 2x0 OK\r\n\r\n", True)[1][0] == "HttpParserInvalidStatusError"


def test_the_import_check_corpus_reaches_every_callback_and_outcome() -> None:
    """The check llhooks runs at import would see a wrong slot or errno: its corpus makes every
    callback fire and every kind of failure happen."""
    names, outcomes = set(), set()
    for corpus, response in ((llhooks.CHECK_REQUESTS, False), (llhooks.CHECK_RESPONSES, True)):
        for data in corpus:
            for raise_at in llhooks.RAISE_AT:
                events, outcome = _records(data, response, raise_at)
                names.update(name for name, _ in events)
                if outcome is not None:
                    outcomes.add(outcome[0] if outcome[2] is None else (outcome[0], outcome[2]))
    assert names == {"begin", "url", "headers", "body", "complete", "chunk_header", "chunk_complete"}
    assert outcomes >= {"HttpParserUpgrade", "HttpParserInvalidURLError", "HttpParserInvalidMethodError",
                        "HttpParserInvalidStatusError", "HttpParserError",
                        ("HttpParserCallbackError", "_Planted")}


@pytest.mark.parametrize("data", [c[1] for c in REJECTED] + [c[1] for c in FORWARDED],
                         ids=[c[0] for c in REJECTED] + [c[0] for c in FORWARDED])
def test_wire_table_requests(data: bytes) -> None:
    assert llhooks.disagreements([data], False, STEPS) == []


@pytest.mark.parametrize("data", [c[1] for c in ISSUE_HEADS], ids=[c[0] for c in ISSUE_HEADS])
def test_segmentation_heads(data: bytes) -> None:
    assert llhooks.disagreements([data], False, STEPS) == []


@pytest.mark.parametrize("base", BASES, ids=["base1", "base2"])
def test_mutated_chunked_bodies(base: bytes) -> None:
    """Each byte of a chunked body replaced by, or preceded by, each mutation (llhttp decodes these
    bodies in the hooked parser only for responses; requests stop after the head, so both)."""
    cases = []
    for i in range(len(base)):
        for m in MUTATIONS:
            body = base[:i] + m + base[i + 1:]
            cases.append((CHUNKED_HEAD + body, False))
            cases.append((b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + body, True))
            body = base[:i] + m + base[i:]
            cases.append((b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + body, True))
    bad = [d for data, response in cases for d in llhooks.disagreements([data], response, (0, 1))]
    assert bad == []


@pytest.mark.parametrize("data", [c[1] for c in BAD_INTERIM], ids=[c[0] for c in BAD_INTERIM])
def test_interim_responses(data: bytes) -> None:
    assert llhooks.disagreements([data], True, STEPS) == []
