"""A plain-Python reference model of head handling: what the data plane did when httptools handed
it each field (on_header), kept to check the compiled head scanning (gateway/http/head.pyx).

The model parses with httptools' own `on_header` callback, applies the head limits field by field
(GATEWAY_MAX_HEADERS, GATEWAY_MAX_HEADER_BYTES: name + value + 4), classifies names with wire.py's
tables, and says which fields are forwarded, in order, and how their lines read:
- request: `lowercased-name: value` for the end-to-end fields (H_FORWARD), minus the names the
  client's Connection lists;
- response: `name: value` as the upstream spelled the name, for R_FORWARD fields, minus the names
  its Connection lists.
The value is llhttp's (leading SP/HTAB dropped, trailing whitespace kept).
"""
from __future__ import annotations

from typing import NamedTuple

import httptools

from gateway.http.wire import H_FORWARD, R_FORWARD, REQUEST_CLASSES, RESPONSE_CLASSES, classify_slow


class Verdict(NamedTuple):
    outcome: str                       # "ok", "too_large", "invalid" or "incomplete"
    forwarded: list[bytes]             # the forwarded field lines (CRLF included), in order


class _OverLimit(Exception):
    pass


class _Collect:
    def __init__(self, max_headers: int, max_header_bytes: int) -> None:
        self.fields: list[tuple[bytes, bytes]] = []
        self.bytes = 0
        self.max_headers = max_headers
        self.max_header_bytes = max_header_bytes
        self.complete = False

    def on_header(self, name: bytes, value: bytes) -> None:
        self.fields.append((name, value))
        self.bytes += len(name) + len(value) + 4
        if self.bytes > self.max_header_bytes or len(self.fields) > self.max_headers:
            raise _OverLimit()

    def on_headers_complete(self) -> None:
        self.complete = True
        raise _Stop()   # the model looks at one head


class _Stop(Exception):
    pass


def _parse(parser_cls: type, head: bytes, max_headers: int, max_header_bytes: int) -> tuple[str, list]:
    c = _Collect(max_headers, max_header_bytes)
    try:
        parser_cls(c).feed_data(head)
    except httptools.HttpParserError as exc:
        cause = exc.__cause__ or exc.__context__
        if isinstance(cause, _OverLimit):
            return "too_large", []
        if not isinstance(cause, _Stop):
            return "invalid", []
    if not c.complete:
        return "incomplete", []
    return "ok", c.fields


def _connection_named(fields: list[tuple[bytes, bytes]]) -> set[bytes]:
    conn = [v for n, v in fields if n.lower() == b"connection"]
    if not conn:
        return set()
    return {t.strip().lower() for t in b",".join(conn).split(b",")}


def request_model(head: bytes, max_headers: int, max_header_bytes: int) -> Verdict:
    outcome, fields = _parse(httptools.HttpRequestParser, head, max_headers, max_header_bytes)
    if outcome != "ok":
        return Verdict(outcome, [])
    named = _connection_named(fields)
    out = []
    for name, value in fields:
        lname = name.lower()
        cls = REQUEST_CLASSES.get(lname)
        if cls is None:
            cls = classify_slow(lname)
        if cls == H_FORWARD and lname not in named:
            out.append(lname + b": " + value + b"\r\n")
    return Verdict("ok", out)


def response_model(head: bytes, max_headers: int, max_header_bytes: int) -> Verdict:
    outcome, fields = _parse(httptools.HttpResponseParser, head, max_headers, max_header_bytes)
    if outcome != "ok":
        return Verdict(outcome, [])
    named = _connection_named(fields)
    out = []
    for name, value in fields:
        if RESPONSE_CLASSES.get(name.lower(), R_FORWARD) == R_FORWARD and name.lower() not in named:
            out.append(name + b": " + value + b"\r\n")
    return Verdict("ok", out)
