def response_head(
    status_line: bytes, fields: list[tuple[bytes, bytes]], framing: bytes, request_id: bytes, tail: bytes
) -> bytes: ...
def request_head(
    method: bytes, target: bytes, host_header: bytes, fields: list[tuple[bytes, bytes]], framing: bytes,
    extra: list[tuple[bytes, bytes]], forwarded: bytes, request_id: bytes, traceparent: bytes,
    tracestate: bytes | None,
) -> bytes: ...
