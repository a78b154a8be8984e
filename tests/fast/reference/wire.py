"""Reference models of gateway/_fast/wire.pyx's head serialization: same signatures, same bytes.

tests/fast/test_wire.py drives both with the same random inputs and compares the output.
"""
from __future__ import annotations

CRLF = b"\r\n"


def py_response_head(status_line: bytes, fields: list[tuple[bytes, bytes]], framing: bytes,
                     request_id: bytes, tail: bytes) -> bytes:
    return b"".join([
        status_line, b"".join([b"%s: %s\r\n" % nv for nv in fields]), framing,
        b"X-Request-Id: ", request_id, b"\r\nX-Content-Type-Options: nosniff\r\n", tail, CRLF,
    ])


def py_request_head(method: bytes, target: bytes, host_header: bytes, fields: list[tuple[bytes, bytes]],
                    framing: bytes, extra: list[tuple[bytes, bytes]], forwarded: bytes, request_id: bytes,
                    traceparent: bytes, tracestate: bytes | None) -> bytes:
    parts = [method, b" ", target, b" HTTP/1.1\r\nHost: ", host_header, CRLF,
             b"".join([b"%s: %s\r\n" % nv for nv in fields]), framing,
             b"".join([b"%s: %s\r\n" % nv for nv in extra]), forwarded,
             b"X-Request-Id: ", request_id, b"\r\ntraceparent: ", traceparent]
    if tracestate is not None:
        parts += (b"\r\ntracestate: ", tracestate)
    parts.append(b"\r\n\r\n")
    return b"".join(parts)
