"""What httptools' getters answer (method, status code, keep-alive, upgrade), read from llhttp's
own state in C instead of a Python method call each.

httptools gives these only as Python methods of its parser: `get_method()` (which also makes a new
bytes object per call), `get_status_code()`, `should_keep_alive()`, `should_upgrade()`. The data
plane asked four of them per exchange, about 900 instructions of the ~28,500 a bare exchange costs
in user space (bench/results/headers.md, live callgrind). llhttp keeps the answers in fields of
its `llhttp_t`, which parser_stop.pxd already reaches (the layout of llhttp 9.x, the release
httptools 0.6 to 0.9 bundle).

The verdicts stay llhttp's: keep-alive is read directly only where llhttp_should_keep_alive()
reduces to one flag (an HTTP/1.1 request: not `Connection: close`; an HTTP/1.1 response with
Content-Length and no Transfer-Encoding: the same), and every other case asks the getter. At import
a corpus of heads is parsed and every direct answer compared with the getter's; if any differs (a
different llhttp inside httptools), `DIRECT` stays False and every call asks httptools, as before.
tests/http/test_llstate.py checks both on generated heads.
"""
import httptools

from gateway.http.parser_stop cimport _known, llhttp_prefix


# llhttp_flags (llhttp.h; the same values since llhttp 2.0)
cdef enum:
    F_CONNECTION_CLOSE = 0x2
    F_CONTENT_LENGTH = 0x20
    F_TRANSFER_ENCODING = 0x200

cdef bint _direct = False
# llhttp's method number -> the bytes get_method() returned for it (one shared object per method).
cdef list _methods = [None] * 256


cdef bytes request_method(object parser):
    cdef llhttp_prefix* s
    if _direct:
        s = _known(parser)   # (parser_stop.pxd: NULL if not where expected)
        if s != NULL:
            m = _methods[s.method]
            if m is None:
                m = parser.get_method()
                _methods[s.method] = m
            return <bytes>m
    return parser.get_method()


cdef bint request_keep_alive(object parser) except -1:
    cdef llhttp_prefix* s
    if _direct:
        s = _known(parser)
        if s != NULL and s.http_major == 1 and s.http_minor == 1:
            # llhttp_should_keep_alive for HTTP/1.1: no `close`, and a request never needs EOF.
            return (s.flags & F_CONNECTION_CLOSE) == 0
    return bool(parser.should_keep_alive())


cdef bint response_keep_alive(object parser) except -1:
    cdef llhttp_prefix* s
    if _direct:
        s = _known(parser)
        if (s != NULL and s.http_major == 1 and s.http_minor == 1
                and (s.flags & (F_CONNECTION_CLOSE | F_TRANSFER_ENCODING)) == 0
                and (s.flags & F_CONTENT_LENGTH) != 0):
            return True   # HTTP/1.1, no close, framed by Content-Length alone: no EOF needed
    return bool(parser.should_keep_alive())


cdef int status_code(object parser) except -1:
    cdef llhttp_prefix* s
    if _direct:
        s = _known(parser)
        if s != NULL:
            return s.status_code
    return parser.get_status_code()


cdef bint should_upgrade(object parser) except -1:
    cdef llhttp_prefix* s
    if _direct:
        s = _known(parser)
        if s != NULL:
            return s.upgrade != 0
    return bool(parser.should_upgrade())


# --- the check at import, and the tests' window ----------------------------------------------------
def verdicts(parser, bint response) -> tuple:
    """(method or status, keep-alive, upgrade) as the data plane reads them: for tests."""
    if response:
        return (status_code(parser), response_keep_alive(parser), should_upgrade(parser))
    return (request_method(parser), request_keep_alive(parser), should_upgrade(parser))


def getters(parser, bint response) -> tuple:
    """The same three answers from httptools' own getters."""
    first = parser.get_status_code() if response else parser.get_method()
    return (first, bool(parser.should_keep_alive()), bool(parser.should_upgrade()))


class _Probe:
    def __init__(self, response: bool) -> None:
        self.response = response
        self.parser = None
        self.seen: list = []

    def on_headers_complete(self) -> None:
        self.seen.append((verdicts(self.parser, self.response), getters(self.parser, self.response)))

    def on_message_complete(self) -> None:
        self.seen.append((verdicts(self.parser, self.response), getters(self.parser, self.response)))


PROBE_REQUESTS = [
    b"GET / HTTP/1.1\r\nHost: a\r\n\r\n",
    b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\nabc",
    b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: a\r\nConnection: keep-alive\r\n\r\n",
    b"GET / HTTP/1.0\r\nHost: a\r\n\r\n",
    b"GET / HTTP/1.0\r\nHost: a\r\nConnection: keep-alive\r\n\r\n",
    b"PUT /u HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    b"DELETE /d HTTP/1.1\r\nHost: a\r\n\r\n",
    b"OPTIONS * HTTP/1.1\r\nHost: a\r\n\r\n",
    b"HEAD /h HTTP/1.1\r\nHost: a\r\n\r\n",
    b"PATCH /p HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\n",
    b"GET /ws HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
]
PROBE_RESPONSES = [
    b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
    b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok",
    b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok",
    b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 2\r\n\r\nok",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    b"HTTP/1.1 204 No Content\r\n\r\n",
    b"HTTP/1.1 304 Not Modified\r\n\r\n",
    b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 1\r\n\r\nx",
]


def _answers(bytes head, bint response) -> list:
    """(direct answers, getters' answers) at each callback of a fresh parser fed `head`."""
    probe = _Probe(response)
    parser = (httptools.HttpResponseParser if response else httptools.HttpRequestParser)(probe)
    probe.parser = parser
    try:
        parser.feed_data(head)
    except (httptools.HttpParserError, httptools.HttpParserUpgrade):
        pass   # (an upgrade's pause, or a head llhttp refuses: what it saw first still counts)
    return probe.seen


def disagreements(heads: list, bint response) -> list:
    """Heads on which a direct answer differs from httptools' getter (each on a fresh parser)."""
    return [(head, direct, slow) for head in heads
            for direct, slow in _answers(head, response) if direct != slow]


def _check() -> bool:
    """Every probe head reaches its callbacks (a comparison that saw nothing proves nothing) and
    every direct answer there is the getter's."""
    global _direct
    _direct = True
    try:
        ok = True
        for heads, response in ((PROBE_REQUESTS, False), (PROBE_RESPONSES, True)):
            for head in heads:
                seen = _answers(head, response)
                ok = ok and bool(seen) and all(direct == slow for direct, slow in seen)
    except Exception:   # noqa: BLE001 - any surprise: ask httptools, as before
        ok = False
    _direct = ok
    return ok


DIRECT = _check()
