"""llhttp driven from C: the protocols' callbacks called as C functions, and llhttp_execute called
without a Python method call.

httptools calls each llhttp callback as a Python method of the protocol (a C trampoline, a
bound-method call, argument parsing, a try block), and `feed_data` is a Python method too. A bare
proxied exchange makes seven callbacks and two feeds: about 1,050 of its ~22,500 user-space
instructions (bench/results/headers.md, live callgrind). Here llhttp calls the protocols' cdef
methods (they subclass ParserOwner) through the C functions below, and `feed` calls
llhttp_execute itself, raising what httptools' feed_data raises, only when it fails.

httptools still makes the parsers (its HttpParser allocates and initialises llhttp_t and the
settings block), and its getters still answer where llstate.pyx does not. What is taken over:
  - the callback slots of the parser's llhttp_settings_t. Their positions depend on the llhttp
    release inside httptools, so they are found at import (`_find_slots`): parsers are made for
    protocols with and without each callback httptools knows, and the slot httptools fills for
    exactly that callback is its slot. Every slot httptools may fill is written by
    `hooked_parser`: one of the C functions below, or NULL;
  - llhttp_t's `data`, which becomes the protocol (httptools' callbacks, which read it as their
    parser, are never left in place). The protocol owns the parser and is the only one feeding
    it, so `data` never outlives it;
  - llhttp_execute, looked up with dlsym in httptools' own extension module (llhttp is linked
    into it with its symbols exported).
At import a corpus of requests and responses, whole and one byte at a time, some failing in a
callback, is parsed both ways, and every callback, argument, exception and stop offset compared
(`_check`); any difference, or a missing symbol or slot, fails the import with the reason, as
parser_stop.pxd's checks do. tests/http/test_llhooks.py runs larger corpora through `compare`.
"""
import httptools

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_GET_SIZE
from cpython.object cimport PyObject

from libc.stdint cimport uint64_t

from gateway.http.parser_stop cimport _llhttp, llhttp_prefix


cdef extern from "<dlfcn.h>" nogil:
    void* dlopen(const char* filename, int flags)
    void* dlsym(void* handle, const char* symbol)
    int RTLD_NOW
    int RTLD_NOLOAD


ctypedef int (*execute_fn)(llhttp_prefix*, const char*, size_t) noexcept nogil

# llhttp_errno (llhttp.h; the same values since llhttp 2.0; `_check` compares the exceptions)
cdef enum:
    HPE_INVALID_METHOD = 6
    HPE_INVALID_URL = 7
    HPE_INVALID_STATUS = 13
    HPE_CB_MESSAGE_BEGIN = 16
    HPE_CB_CHUNK_COMPLETE = 20
    HPE_PAUSED_UPGRADE = 22
    HPE_USER = 24

# The callback slots httptools knows, in llhttp_settings_t order.
cdef enum:
    K_MESSAGE_BEGIN, K_URL, K_STATUS, K_HEADER_FIELD, K_HEADER_VALUE, K_HEADERS_COMPLETE, K_BODY,
    K_MESSAGE_COMPLETE, K_CHUNK_HEADER, K_CHUNK_COMPLETE, K_COUNT

# Slots are looked for among the first MAX_SLOT pointers of the settings block (llhttp 9.x has 25).
cdef Py_ssize_t MAX_SLOT = 48

cdef execute_fn _execute = NULL
cdef Py_ssize_t _slot[K_COUNT]
# The exception a callback raised: set by _failed(), taken by feed() right after llhttp returns
# (a callback that fails makes llhttp return at once, so no other feed can come in between).
cdef object _failure = None

HttpParserError = httptools.HttpParserError
HttpParserCallbackError = httptools.HttpParserCallbackError
HttpParserUpgrade = httptools.HttpParserUpgrade
HttpParserInvalidURLError = httptools.HttpParserInvalidURLError
HttpParserInvalidMethodError = httptools.HttpParserInvalidMethodError
HttpParserInvalidStatusError = httptools.HttpParserInvalidStatusError


class _Quiet:
    """The protocol httptools' parsers are made for: no callbacks of its own (httptools fills only
    the three slots it always fills, which hooked_parser overwrites), and no attribute lookup that
    fails (a missed getattr raises and catches an AttributeError per callback httptools asks for)."""
    on_message_begin = on_url = on_status = on_header = on_headers_complete = None
    on_body = on_message_complete = on_chunk_header = on_chunk_complete = None


_QUIET = _Quiet()


cdef class ParserOwner:
    """(llhooks.pxd) Each callback does nothing unless the owner overrides it."""
    cdef int _message_begin(self) except -1:
        return 0

    cdef int _url(self, bytes url) except -1:
        return 0

    cdef int _headers_complete(self) except -1:
        return 0

    cdef int _on_body(self, bytes body) except -1:
        return 0

    cdef int _message_complete(self) except -1:
        return 0

    cdef int _chunk_header(self, uint64_t size) except -1:
        return 0

    cdef int _chunk_complete(self) except -1:
        return 0


# --- llhttp's callbacks: `data` is the owner ------------------------------------------------------
cdef int _failed(llhttp_prefix* p, BaseException exc) noexcept:
    """The owner's method raised exc: llhttp stops there (-1), feed raises from exc."""
    global _failure
    _failure = exc
    p.reason = "callback error"   # (llhttp names the callback itself for the notifying ones)
    return -1


cdef int _ll_message_begin(llhttp_prefix* p) noexcept:
    try:
        (<ParserOwner>p.data)._message_begin()
    except BaseException as exc:
        return _failed(p, exc)
    return 0


cdef int _ll_url(llhttp_prefix* p, const char* at, size_t n) noexcept:
    try:
        (<ParserOwner>p.data)._url(at[:n])
    except BaseException as exc:
        return _failed(p, exc)
    return 0


cdef int _ll_headers_complete(llhttp_prefix* p) noexcept:
    try:
        (<ParserOwner>p.data)._headers_complete()
    except BaseException as exc:
        return _failed(p, exc)
    # 1 (no body: llhttp then pauses with HPE_PAUSED_UPGRADE) for an upgrade, as httptools answers
    return 1 if p.upgrade else 0


cdef int _ll_body(llhttp_prefix* p, const char* at, size_t n) noexcept:
    try:
        (<ParserOwner>p.data)._on_body(at[:n])
    except BaseException as exc:
        return _failed(p, exc)
    return 0


cdef int _ll_message_complete(llhttp_prefix* p) noexcept:
    try:
        (<ParserOwner>p.data)._message_complete()
    except BaseException as exc:
        return _failed(p, exc)
    return 0


cdef int _ll_chunk_header(llhttp_prefix* p) noexcept:
    try:
        (<ParserOwner>p.data)._chunk_header(p.content_length)   # (the chunk's size, here)
    except BaseException as exc:
        return _failed(p, exc)
    return 0


cdef int _ll_chunk_complete(llhttp_prefix* p) noexcept:
    try:
        (<ParserOwner>p.data)._chunk_complete()
    except BaseException as exc:
        return _failed(p, exc)
    return 0


cdef object hooked_parser(bint response, ParserOwner owner, int wanted):
    """A new httptools parser whose callbacks are the owner's methods named by `wanted` (W_*) and
    its _headers_complete, called with `data` = owner (borrowed: the owner keeps the parser and is
    the only one to feed it)."""
    parser = (httptools.HttpResponseParser if response else httptools.HttpRequestParser)(_QUIET)
    cdef llhttp_prefix* st = _llhttp(parser)
    cdef void** s = <void**>st.settings
    s[_slot[K_MESSAGE_BEGIN]] = <void*>_ll_message_begin if wanted & W_MESSAGE_BEGIN else NULL
    s[_slot[K_URL]] = <void*>_ll_url if wanted & W_URL else NULL
    s[_slot[K_STATUS]] = NULL
    s[_slot[K_HEADER_FIELD]] = NULL
    s[_slot[K_HEADER_VALUE]] = NULL
    s[_slot[K_HEADERS_COMPLETE]] = <void*>_ll_headers_complete
    s[_slot[K_BODY]] = <void*>_ll_body if wanted & W_BODY else NULL
    s[_slot[K_MESSAGE_COMPLETE]] = <void*>_ll_message_complete if wanted & W_MESSAGE_COMPLETE else NULL
    s[_slot[K_CHUNK_HEADER]] = <void*>_ll_chunk_header if wanted & W_CHUNKS else NULL
    s[_slot[K_CHUNK_COMPLETE]] = <void*>_ll_chunk_complete if wanted & W_CHUNKS else NULL
    st.data = <void*>owner
    return parser


cdef int feed(object parser, bytes data) except -1:
    """httptools' feed_data(data) for a hooked parser: the same exceptions, the callback's own
    exception as __cause__ (httptools chains it as __context__; the callers read either)."""
    cdef llhttp_prefix* st = _llhttp(parser)
    cdef const char* buf = PyBytes_AS_STRING(data)
    cdef int err = _execute(st, buf, <size_t>PyBytes_GET_SIZE(data))
    if err != 0:
        _raise(st, err, buf)
    return 0


cdef int _raise(llhttp_prefix* st, int err, const char* buf) except -1:
    global _failure
    failure = _failure
    _failure = None
    if err == HPE_PAUSED_UPGRADE and st.upgrade == 1:
        offset = st.error_pos - buf
        st.error = 0   # (llhttp_resume_after_upgrade, as httptools does)
        raise HttpParserUpgrade(offset)
    reason = st.reason.decode("latin-1") if st.reason != NULL else ""
    if failure is not None:
        raise HttpParserCallbackError(reason) from failure
    if err == -1 or err == HPE_USER or HPE_CB_MESSAGE_BEGIN <= err <= HPE_CB_CHUNK_COMPLETE:
        raise HttpParserCallbackError(reason)
    if err == HPE_INVALID_STATUS:
        raise HttpParserInvalidStatusError(reason)
    if err == HPE_INVALID_METHOD:
        raise HttpParserInvalidMethodError(reason)
    if err == HPE_INVALID_URL:
        raise HttpParserInvalidURLError(reason)
    raise HttpParserError(reason)


# --- finding the slots and llhttp_execute ------------------------------------------------------
cdef void* _httptools_settings(object parser) noexcept:
    """HttpParser's `_csettings` (the field after `_cparser`, parser_stop.pxd)."""
    return (<void**>(<char*><PyObject*>parser + sizeof(PyObject) + 2 * sizeof(void*)))[0]


def _noop(*args) -> None:
    return None


def _filled(bint response, names: tuple, Py_ssize_t expected) -> list:
    """Indices of the settings slots httptools fills for a protocol with these callbacks: scanned
    from the first until `expected` are found (so never past the last one httptools fills)."""
    proto = type("_Probe", (), {name: _noop for name in names})()
    parser = (httptools.HttpResponseParser if response else httptools.HttpRequestParser)(proto)
    cdef llhttp_prefix* st = _llhttp(parser)
    if st == NULL or st.data != <void*>parser or st.settings != _httptools_settings(parser):
        raise ImportError("llhttp_t's data or settings is not where parser_stop.pxd says")
    cdef void** s = <void**>st.settings
    cdef Py_ssize_t i
    found = []
    for i in range(MAX_SLOT):
        if s[i] != NULL:
            found.append(i)
            if len(found) == expected:
                return found
    raise ImportError(f"{expected} callback slots expected in llhttp_settings_t, found {found}")


_OPTIONAL = ("on_message_begin", "on_body", "on_message_complete", "on_header")


def _find_slots() -> None:
    # Filled whatever the protocol has: on_headers_complete, on_chunk_header, on_chunk_complete.
    # Each optional callback fills one slot (on_header two: field, value); on_url only in a
    # request parser, on_status only in a response parser.
    for response, own in ((False, "on_url"), (True, "on_status")):
        every = _OPTIONAL + (own,)
        full = _filled(response, every, 9)
        taken = {}
        for name in every:
            without = set(_filled(response, tuple(n for n in every if n != name), 7 if name == "on_header" else 8))
            taken[name] = sorted(set(full) - without)
        always = sorted(set(full) - {i for slots in taken.values() for i in slots})
        if len(always) != 3 or any(len(v) != (2 if k == "on_header" else 1) for k, v in taken.items()):
            raise ImportError(f"llhttp_settings_t slots not told apart: {taken}, {always}")
        slots = {"on_message_begin": taken["on_message_begin"][0], own: taken[own][0],
                 "on_header_field": taken["on_header"][0], "on_header_value": taken["on_header"][1],
                 "on_body": taken["on_body"][0], "on_message_complete": taken["on_message_complete"][0],
                 # (the three always filled, in llhttp's order)
                 "on_headers_complete": always[0], "on_chunk_header": always[1],
                 "on_chunk_complete": always[2]}
        if not (slots["on_headers_complete"] < slots["on_body"] < slots["on_message_complete"]
                < slots["on_chunk_header"]):
            raise ImportError(f"llhttp_settings_t slots out of llhttp's order: {slots}")
        for key, name in ((K_MESSAGE_BEGIN, "on_message_begin"), (K_HEADER_FIELD, "on_header_field"),
                          (K_HEADER_VALUE, "on_header_value"), (K_HEADERS_COMPLETE, "on_headers_complete"),
                          (K_BODY, "on_body"), (K_MESSAGE_COMPLETE, "on_message_complete"),
                          (K_CHUNK_HEADER, "on_chunk_header"), (K_CHUNK_COMPLETE, "on_chunk_complete"),
                          (K_URL if own == "on_url" else K_STATUS, own)):
            if response and key != K_STATUS and _slot[key] != slots[name]:
                raise ImportError(f"llhttp_settings_t: {name} in another slot for responses")
            _slot[key] = slots[name]
    if _slot[K_URL] == _slot[K_STATUS]:
        raise ImportError("llhttp_settings_t: on_url and on_status in one slot")


def _find_execute() -> None:
    global _execute
    from httptools.parser import parser as module
    path = module.__file__.encode()
    cdef void* handle = dlopen(path, RTLD_NOW | RTLD_NOLOAD)
    if handle == NULL:
        raise ImportError(f"httptools' parser module not found by dlopen: {module.__file__}")
    _execute = <execute_fn>dlsym(handle, "llhttp_execute")
    # (the handle stays open: the module is loaded for the process's life anyway)
    if _execute == NULL:
        raise ImportError(f"llhttp_execute is not exported by {module.__file__}")


# --- the check at import, and the tests' window -------------------------------------------------
cdef class _Recorder(ParserOwner):
    """A hooked parser's owner that writes down each callback, and raises at one of them."""
    cdef list events
    cdef object parser
    cdef str raise_at

    def __init__(self, bint response, raise_at) -> None:
        self.events = []
        self.raise_at = raise_at
        self.parser = hooked_parser(response, self, W_MESSAGE_BEGIN | W_URL | W_BODY | W_MESSAGE_COMPLETE | W_CHUNKS)

    cdef int note(self, str name, object arg) except -1:
        self.events.append((name, arg))
        if name == self.raise_at:
            raise _Planted(name)
        return 0

    cdef int _message_begin(self) except -1:
        return self.note("begin", None)

    cdef int _url(self, bytes url) except -1:
        return self.note("url", url)

    cdef int _headers_complete(self) except -1:
        cdef llhttp_prefix* st = _llhttp(self.parser)
        return self.note("headers", (st.method, st.status_code))

    cdef int _on_body(self, bytes body) except -1:
        return self.note("body", body)

    cdef int _message_complete(self) except -1:
        return self.note("complete", None)

    cdef int _chunk_header(self, uint64_t size) except -1:
        return self.note("chunk_header", size)

    cdef int _chunk_complete(self) except -1:
        return self.note("chunk_complete", None)


class _Planted(Exception):
    """Raised by a recorder's callback on purpose."""


class _PyRecorder:
    """The same record through httptools' own callbacks and feed_data."""

    def __init__(self, response: bool, raise_at) -> None:
        self.events: list = []
        self.raise_at = raise_at
        self.response = response
        cls = httptools.HttpResponseParser if response else httptools.HttpRequestParser
        self.parser = cls(self)

    def note(self, name: str, arg) -> None:
        self.events.append((name, arg))
        if name == self.raise_at:
            raise _Planted(name)

    def on_message_begin(self) -> None:
        self.note("begin", None)

    def on_url(self, url: bytes) -> None:
        self.note("url", url)

    def on_headers_complete(self) -> None:
        cdef llhttp_prefix* st = _llhttp(self.parser)
        self.note("headers", (st.method, st.status_code))

    def on_body(self, body: bytes) -> None:
        self.note("body", body)

    def on_message_complete(self) -> None:
        self.note("complete", None)

    def on_chunk_header(self) -> None:
        self.note("chunk_header", _llhttp(self.parser).content_length)

    def on_chunk_complete(self) -> None:
        self.note("chunk_complete", None)


def _outcome(exc, parser, bytes chunk) -> tuple:
    """What a failed feed left: the exception's class, its argument for an upgrade, the chained
    exception's class, and where llhttp stopped in the chunk."""
    if exc is None:
        return None
    chained = exc.__cause__ or exc.__context__
    cdef llhttp_prefix* st = _llhttp(parser)
    stop = (st.error_pos - PyBytes_AS_STRING(chunk)) if st.error_pos != NULL else None
    if type(exc) is HttpParserUpgrade:
        return (type(exc).__name__, exc.args, None, None)
    return (type(exc).__name__, None, type(chained).__name__ if chained is not None else None, stop)


def compare(bytes data, bint response, raise_at=None, Py_ssize_t step=0) -> tuple:
    """(httptools' record, the hooked parser's record) of data fed whole, or `step` bytes at a
    time, with the callback named raise_at raising: each is (events, outcome of the failing feed
    or None). The two must be equal."""
    results = []
    for hooked in (False, True):
        rec = _Recorder(response, raise_at) if hooked else _PyRecorder(response, raise_at)
        chunks = [data] if step <= 0 else [data[i:i + step] for i in range(0, len(data), step)]
        outcome = None
        for chunk in chunks:
            try:
                if hooked:
                    feed((<_Recorder>rec).parser, chunk)
                else:
                    rec.parser.feed_data(chunk)
            except (httptools.HttpParserError, httptools.HttpParserUpgrade) as exc:
                outcome = _outcome(exc, (<_Recorder>rec).parser if hooked else rec.parser, chunk)
                break
        results.append(((<_Recorder>rec).events if hooked else rec.events, outcome))
    return tuple(results)


CHECK_REQUESTS = [
    b"GET /a?b=c HTTP/1.1\r\nHost: x\r\n\r\nPOST /p HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc",
    b"PUT /u HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3;e=1\r\nabc\r\n0\r\nT: 1\r\n\r\n",
    b"GET /ws HTTP/1.1\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n\x81\x00",
    b"CONNECT a:443 HTTP/1.1\r\n\r\nrest",
    b"G@T / HTTP/1.1\r\n\r\n",
    b"GET /\x01 HTTP/1.1\r\n\r\n",
    b"GET / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
    b"GET / HTTP/1.1\r\nBad Field: x\r\n\r\n",
]
CHECK_RESPONSES = [
    b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokHTTP/1.1 204 No Content\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",
    b"HTTP/1.1 101 Switching Protocols\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\nxx",
    b"HTTP/1.1 2x0 OK\r\n\r\n",
    b"HTTP/1.0 200 OK\r\n\r\nuntil close",
]
RAISE_AT = (None, "begin", "url", "headers", "body", "complete", "chunk_header", "chunk_complete")


def disagreements(heads: list, bint response, steps=(0, 1)) -> list:
    """(data, raise_at, step, httptools' record, ours) wherever the two differ."""
    out = []
    for data in heads:
        for raise_at in RAISE_AT:
            for step in steps:
                slow, fast = compare(data, response, raise_at, step)
                if slow != fast:
                    out.append((data, raise_at, step, slow, fast))
    return out


def _check() -> None:
    bad = disagreements(CHECK_REQUESTS, False) + disagreements(CHECK_RESPONSES, True)
    if bad:
        raise ImportError(f"httptools {httptools.__version__}: llhttp driven from C differs from "
                          f"httptools' feed_data (llhooks.pyx): {bad[0]}")


_find_slots()
_find_execute()
_check()
