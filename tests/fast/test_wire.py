"""gateway._fast.wire: the compiled head serializers give the same bytes as the Python references."""
from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway._fast import wire as fast
from tests.fast.reference.wire import py_request_head, py_response_head

token = st.binary(min_size=0, max_size=40)
fields = st.lists(st.tuples(token, token), max_size=12)


@settings(max_examples=300, deadline=None)
@given(token, fields, token, token, token)
def test_response_head_matches_reference(line: bytes, fs: list, framing: bytes, rid: bytes, tail: bytes) -> None:
    assert fast.response_head(line, fs, framing, rid, tail) == py_response_head(line, fs, framing, rid, tail)


@settings(max_examples=300, deadline=None)
@given(token, token, token, fields, token, fields, token, token, token, st.none() | token)
def test_request_head_matches_reference(m: bytes, t: bytes, h: bytes, fs: list, fr: bytes, ex: list,
                                        fw: bytes, rid: bytes, tp: bytes, ts: bytes | None) -> None:
    assert fast.request_head(m, t, h, fs, fr, ex, fw, rid, tp, ts) == py_request_head(m, t, h, fs, fr, ex, fw, rid, tp, ts)


def test_exact_bytes() -> None:
    assert fast.response_head(b"HTTP/1.1 200 OK\r\n", [(b"A", b"1")], b"Content-Length: 0\r\n", b"id", b"") == (
        b"HTTP/1.1 200 OK\r\nA: 1\r\nContent-Length: 0\r\nX-Request-Id: id\r\nX-Content-Type-Options: nosniff\r\n\r\n")
    assert fast.request_head(b"GET", b"/x", b"u:1", [(b"a", b"b")], b"", [], b"F: 1\r\n", b"r", b"tp", b"k=v") == (
        b"GET /x HTTP/1.1\r\nHost: u:1\r\na: b\r\nF: 1\r\nX-Request-Id: r\r\ntraceparent: tp\r\ntracestate: k=v\r\n\r\n")


@pytest.mark.parametrize("bad", [[(b"a",)], [[b"a", b"b"]], [(b"a", "str")], [("a", b"b")], [b"ab"]])
def test_refuses_non_bytes_pairs(bad: list) -> None:
    with pytest.raises(TypeError):
        fast.response_head(b"", bad, b"", b"", b"")
    with pytest.raises(TypeError):
        fast.request_head(b"", b"", b"", [], b"", bad, b"", b"", b"", None)


def test_data_plane_uses_the_compiled_version() -> None:
    from gateway.http import request, upstream

    assert upstream.response_head is fast.response_head and request.request_head is fast.request_head
