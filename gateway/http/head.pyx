"""A head as one bytes object and the spans of its fields: no Python object per field.

llhttp (through httptools) gives the verdict on every head: the data plane no longer asks it for
the fields one Python call at a time (no `on_header`); once llhttp has accepted a head, its bytes
are scanned here in C. The grammar left to scan is tiny because llhttp already refused everything
else (strict mode): the first line ends with CRLF, every field line is `name:` (a token, no
whitespace before the colon), optional SP/HTAB, a value without CR/LF/NUL, CRLF; no obs-fold; the
head ends at the first empty line. The value kept is llhttp's: leading SP/HTAB dropped, trailing
whitespace kept (what httptools handed over before), so the head limits measure the same bytes.

`HeaderView` is what filters see as `ctx.headers`: `get(name)`, `get_all(name)`, `count(name)`,
iteration over `(lowercased name, value)` of the end-to-end fields, and edits (`remove`, `add`,
`set`) applied when the upstream head is written. A value becomes a bytes object only when asked
for. The data plane writes the forwarded fields straight from the spans (`wire_put`).

Names are classified in C against wire.py's tables (REQUEST_CLASSES, classify_slow,
RESPONSE_CLASSES), read once at import: wire.py stays the one place that says what a name is.
"""
cimport cython
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from cpython.list cimport PyList_GET_ITEM, PyList_GET_SIZE
from cpython.mem cimport PyMem_Free, PyMem_Malloc, PyMem_Realloc
from cpython.tuple cimport PyTuple_GET_ITEM
from libc.stdint cimport int32_t, uint64_t
from libc.string cimport memchr, memcmp, memcpy

from .wire import H_CONNECTION, H_DROP, H_FORWARD, H_OWNED, H_XFWD, R_FORWARD, REQUEST_CLASSES, RESPONSE_CLASSES

cdef int cH_FORWARD = H_FORWARD
cdef int cH_CONNECTION = H_CONNECTION
cdef int cH_DROP = H_DROP
cdef int cH_OWNED = H_OWNED
cdef int cH_XFWD = H_XFWD
cdef int cR_FORWARD = R_FORWARD


# --- name tables, copied from wire.py into C arrays at import ---------------------------------
cdef struct _Entry:
    const char* name    # lowercase
    Py_ssize_t n
    int cls

# Entries sorted by name length; _req_at[n] is where names of length n start (_req_at[n + 1]
# where they end): a name is compared only with the two or three entries of its own length.
cdef enum:
    NAME_MAX = 40
cdef _Entry _req[64]
cdef Py_ssize_t _req_at[NAME_MAX + 2]
cdef _Entry _resp[64]
cdef Py_ssize_t _resp_at[NAME_MAX + 2]
_keep = []   # the bytes objects the tables point into
cdef unsigned char _LOWER[256]


cdef int _load(dict classes, _Entry* out, Py_ssize_t* at) except -1:
    names = sorted((bytes(name).lower(), cls) for name, cls in classes.items())
    names.sort(key=lambda item: len(item[0]))
    if len(names) > 64 or max(len(n) for n, _ in names) > NAME_MAX:
        raise ImportError("head.pyx: wire.py's header names do not fit the C tables")
    cdef Py_ssize_t k = 0, n
    for n in range(NAME_MAX + 2):
        at[n] = 0
    for name, cls in names:
        _keep.append(name)
        out[k].name = PyBytes_AS_STRING(name)
        out[k].n = PyBytes_GET_SIZE(name)
        out[k].cls = cls
        k += 1
    k = 0
    for n in range(NAME_MAX + 2):
        while k < len(names) and len(names[k][0]) < n:
            k += 1
        at[n] = k
    return 0


_load(REQUEST_CLASSES, _req, _req_at)
_load(RESPONSE_CLASSES, _resp, _resp_at)
for _c in range(256):
    _LOWER[_c] = _c + 32 if 65 <= _c <= 90 else _c


cdef inline unsigned char _low(unsigned char c) noexcept:
    return _LOWER[c]


cdef inline void _lower_in_place(char* q, Py_ssize_t n) noexcept:
    """ASCII A-Z to a-z over q[:n], eight bytes per step (SWAR): a forwarded request's names are
    written lowercased, ~200 name bytes in a browser's head, which a table lookup per byte made
    ~1,200 instructions per request. Bytes over 0x7f are left alone (and cause no carry)."""
    cdef uint64_t w, h, m
    while n >= 8:
        memcpy(&w, q, 8)
        h = w & <uint64_t>0x7f7f7f7f7f7f7f7f
        # bit 7 of each byte of (h + 0x3f) is set from 'A' up, of (h + 0x25) from '[' up
        m = ((h + <uint64_t>0x3f3f3f3f3f3f3f3f) & ~(h + <uint64_t>0x2525252525252525)
             & ~w & <uint64_t>0x8080808080808080)
        w |= m >> 2
        memcpy(q, &w, 8)
        q += 8
        n -= 8
    while n > 0:
        q[0] = <char>_LOWER[<unsigned char>q[0]]
        q += 1
        n -= 1


def lowered(data: bytes) -> bytes:
    """_lower_in_place on a copy (for tests)."""
    out = bytearray(data)
    _lower_in_place(<char*>out, len(out))
    return bytes(out)


cdef inline bint _ieq(const unsigned char* p, const char* lname, Py_ssize_t n, bint dash) noexcept:
    """p[:n] equals the lowercase lname, case-insensitively ('_' read as '-' when dash)."""
    cdef Py_ssize_t i
    cdef unsigned char c
    for i in range(n):
        c = _LOWER[p[i]]
        if dash and c == 95:
            c = 45
        if c != <unsigned char>lname[i]:
            return False
    return True


cdef inline int _lookup(const unsigned char* p, Py_ssize_t n, _Entry* table, Py_ssize_t* at,
                        bint dash) noexcept:
    cdef Py_ssize_t k
    if n > NAME_MAX:
        return -1
    for k in range(at[n], at[n + 1]):
        if _ieq(p, table[k].name, n, dash):
            return table[k].cls
    return -1


cdef bint same_name(const unsigned char* p, Py_ssize_t n, const char* lname, Py_ssize_t m) noexcept:
    """p[:n] equals the lowercase lname (m bytes) in any case: _ieq for other modules."""
    return n == m and _ieq(p, lname, n, False)


cdef int classify_request(const unsigned char* p, Py_ssize_t n) noexcept:
    """wire.py's class of a request field name (REQUEST_CLASSES, then classify_slow), in C."""
    cdef int cls = _lookup(p, n, _req, _req_at, False)
    if cls >= 0:
        return cls
    if n > 11 and _ieq(p, b"x-consumer-", 11, False):
        return cH_OWNED
    if n > 12 and _ieq(p, b"x-forwarded-", 12, False):
        return cH_XFWD
    # A '_' in the name: a look-alike of a name that matters is dropped. (Looked for only here,
    # for the names no table knows: most of a browser's fields.)
    if memchr(p, 95, n) != NULL:
        if (_lookup(p, n, _req, _req_at, True) >= 0 or (n > 11 and _ieq(p, b"x-consumer-", 11, True))
                or (n > 12 and _ieq(p, b"x-forwarded-", 12, True))):
            return cH_DROP
    return cH_FORWARD


cdef int classify_response(const unsigned char* p, Py_ssize_t n) noexcept:
    """wire.py's class of a response field name (RESPONSE_CLASSES, else R_FORWARD), in C."""
    cdef int cls = _lookup(p, n, _resp, _resp_at, False)
    return cls if cls >= 0 else cR_FORWARD


# --- scanning ------------------------------------------------------------------------------------
cdef HeaderView scan_head(bytes buf, int32_t forward_cls, bint request):
    """The view of a head llhttp accepted: buf runs from the first byte of the request (or status)
    line to the blank line's LF included."""
    return _scan(buf, 0, forward_cls, request, True)


cdef HeaderView _scan(bytes buf, Py_ssize_t start, int32_t forward_cls, bint request, bint whole):
    """The view of the head llhttp accepted that begins at buf[start] (more bytes may follow it:
    a body, the next request). Offsets are buf's; `end` is set after the blank line's LF. Raises
    ValueError when buf holds no complete head there (`whole`: buf is the head, its blank line
    may be left out)."""
    cdef const unsigned char* p = <const unsigned char*>PyBytes_AS_STRING(buf)
    cdef Py_ssize_t size = PyBytes_GET_SIZE(buf), pos, eol, colon, v
    cdef const unsigned char* cr
    cdef HeaderView view = HeaderView.__new__(HeaderView)
    cdef int cls
    view.buf = buf
    view.forward_cls = forward_cls
    view.lower = request
    cr = <const unsigned char*>memchr(p + start, 13, size - start)
    if cr == NULL:
        raise ValueError("not a head")
    view.line_end = cr - p
    pos = view.line_end + 2
    while True:
        if pos >= size:
            if whole:
                view.end = size
                break
            raise ValueError("not a head")
        cr = <const unsigned char*>memchr(p + pos, 13, size - pos)
        if cr == NULL:
            raise ValueError("not a head")
        eol = cr - p
        if eol == pos:
            if eol + 1 >= size:
                raise ValueError("not a head")
            view.end = eol + 2
            break   # the blank line
        cr = <const unsigned char*>memchr(p + pos, 58, eol - pos)   # ':'
        if cr == NULL:
            raise ValueError("a field line without a colon")
        colon = cr - p
        v = colon + 1
        while v < eol and (p[v] == 32 or p[v] == 9):
            v += 1
        if request:
            cls = classify_request(p + pos, colon - pos)
            if cls == cH_CONNECTION or (cls == cH_DROP and colon - pos == 16
                                        and _ieq(p + pos, b"proxy-connection", 16, False)):
                view.connection = True
        else:
            cls = classify_response(p + pos, colon - pos)
        add_field(view, pos, colon - pos, v, eol - v, cls)
        pos = eol + 2
    return view


@cython.freelist(16)   # two per exchange; ~600 bytes each, over pymalloc's small-object bound
cdef class HeaderView:
    """The fields of one head, read in place (module docstring). As `ctx.headers` it lists the
    end-to-end fields: the ones the data plane itself acts on (Host, framing, Connection,
    X-Forwarded-*, X-Request-Id, traceparent...) are not in it, as before."""

    def __cinit__(self) -> None:
        self.f = self.small
        self.cap = 24
        self.n = 0
        self.added = None
        self.connection = False

    def __dealloc__(self) -> None:
        if self.f != self.small:
            PyMem_Free(self.f)

    cdef int _push(self, Py_ssize_t name, Py_ssize_t nlen, Py_ssize_t value, Py_ssize_t vlen,
                   int cls) except -1:
        cdef Field* grown
        if self.n == self.cap:
            if self.f == self.small:
                grown = <Field*>PyMem_Malloc(2 * self.cap * sizeof(Field))
                if grown != NULL:
                    memcpy(grown, self.small, self.n * sizeof(Field))
            else:
                grown = <Field*>PyMem_Realloc(self.f, 2 * self.cap * sizeof(Field))
            if grown == NULL:
                raise MemoryError()
            self.f = grown
            self.cap *= 2
        self.f[self.n].name = <int32_t>name
        self.f[self.n].nlen = <int32_t>nlen
        self.f[self.n].value = <int32_t>value
        self.f[self.n].vlen = <int32_t>vlen
        self.f[self.n].cls = cls
        self.n += 1
        return 0

    # --- for compiled callers ---
    cdef int _rebase(self, bytes buf, Py_ssize_t start) except -1:
        """The head moves to its own bytes object buf, which holds what began at `start`."""
        cdef Py_ssize_t i
        self.buf = buf
        if start:
            for i in range(self.n):
                self.f[i].name -= <int32_t>start
                self.f[i].value -= <int32_t>start
            self.line_end -= start
            self.end -= start
        return 0

    cdef bytes c_value(self, Py_ssize_t i):
        return PyBytes_FromStringAndSize(PyBytes_AS_STRING(self.buf) + self.f[i].value, self.f[i].vlen)

    cdef bytes c_lname(self, Py_ssize_t i):
        cdef Py_ssize_t k, n = self.f[i].nlen
        cdef bytes out = PyBytes_FromStringAndSize(NULL, n)
        cdef unsigned char* o = <unsigned char*>PyBytes_AS_STRING(out)
        cdef const unsigned char* p = <const unsigned char*>PyBytes_AS_STRING(self.buf) + self.f[i].name
        for k in range(n):
            o[k] = _low(p[k])
        return out

    cdef bint c_is(self, Py_ssize_t i, const char* lname, Py_ssize_t n) noexcept:
        return self.f[i].nlen == n and _ieq(
            <const unsigned char*>PyBytes_AS_STRING(self.buf) + self.f[i].name, lname, n, False)

    cdef Py_ssize_t c_find(self, const char* lname, Py_ssize_t n, Py_ssize_t start, bint all) noexcept:
        """Index of the next field from `start` named lname (lowercase): forwarded ones only unless
        `all` (then every field of the head but the removed ones); -1 when none."""
        cdef Py_ssize_t i
        cdef int cls
        for i in range(start, self.n):
            cls = self.f[i].cls
            if (cls == self.forward_cls or (all and cls != F_GONE)) and self.c_is(i, lname, n):
                return i
        return -1

    cdef Py_ssize_t c_count(self, const char* lname, Py_ssize_t n) noexcept:
        """Forwarded fields named lname, in the head (not counting filters' additions)."""
        cdef Py_ssize_t i, k = 0
        for i in range(self.n):
            if self.f[i].cls == self.forward_cls and self.c_is(i, lname, n):
                k += 1
        return k

    cdef object c_get(self, const char* lname, Py_ssize_t n):
        """get() for compiled callers: the first value of the end-to-end fields called lname
        (lowercase), filters' additions included; None when there is none."""
        cdef Py_ssize_t i = self.c_find(lname, n, 0, False)
        if i >= 0:
            return self.c_value(i)
        if self.added:
            key = PyBytes_FromStringAndSize(lname, n)
            for name, value in self.added:
                if name.lower() == key:
                    return value
        return None

    cdef Py_ssize_t c_count_all(self, const char* lname, Py_ssize_t n) except -1:
        """count() for compiled callers (filters' additions included)."""
        cdef Py_ssize_t k = self.c_count(lname, n)
        if self.added:
            key = PyBytes_FromStringAndSize(lname, n)
            for name, _ in self.added:
                if name.lower() == key:
                    k += 1
        return k

    cdef Py_ssize_t wire_size(self) except -1:
        cdef Py_ssize_t i, total = 0
        for i in range(self.n):
            if self.f[i].cls == self.forward_cls:
                total += self.f[i].nlen + self.f[i].vlen + 4
        if self.added:
            for pair in self.added:
                total += PyBytes_GET_SIZE(<bytes>pair[0]) + PyBytes_GET_SIZE(<bytes>pair[1]) + 4
        return total

    cdef char* wire_put(self, char* p) noexcept:
        """Write the forwarded fields as `lowercased-name: value\\r\\n` (the bytes the data plane
        has always sent), then the filters' additions; wire_size() said how many bytes."""
        cdef const unsigned char* src = <const unsigned char*>PyBytes_AS_STRING(self.buf)
        cdef Py_ssize_t i = 0, j, k, n, start, end
        cdef Field* f
        cdef Field* g
        cdef object pair
        cdef int32_t fwd = self.forward_cls
        while i < self.n:
            f = &self.f[i]
            if f.cls != fwd:
                i += 1
                continue
            if f.value == f.name + f.nlen + 2 and src[f.name + f.nlen + 1] == 32:
                # The line reads `name: value` already (one SP after the colon, as nearly every
                # client writes it): it and the adjacent such lines go out in one copy, names
                # lowercased in place for a request. (The same bytes as field by field.)
                start = f.name
                end = f.value + f.vlen + 2
                j = i + 1
                while j < self.n:
                    g = &self.f[j]
                    if (g.cls != fwd or g.name != end or g.value != g.name + g.nlen + 2
                            or src[g.name + g.nlen + 1] != 32):
                        break
                    end = g.value + g.vlen + 2
                    j += 1
                memcpy(p, src + start, end - start)
                if self.lower:
                    for k in range(i, j):
                        g = &self.f[k]
                        _lower_in_place(p + (g.name - start), g.nlen)
                p += end - start
                i = j
                continue
            i += 1
            n = f.nlen
            memcpy(p, src + f.name, n)
            if self.lower:
                _lower_in_place(p, n)
            p[n] = 58   # ':'
            p[n + 1] = 32
            p += n + 2
            memcpy(p, src + f.value, f.vlen)
            p += f.vlen
            p[0] = 13
            p[1] = 10
            p += 2
        if self.added:
            for k in range(PyList_GET_SIZE(self.added)):
                pair = <object>PyList_GET_ITEM(self.added, k)
                n = PyBytes_GET_SIZE(<bytes>PyTuple_GET_ITEM(pair, 0))
                memcpy(p, PyBytes_AS_STRING(<bytes>PyTuple_GET_ITEM(pair, 0)), n)
                p[n] = 58
                p[n + 1] = 32
                p += n + 2
                n = PyBytes_GET_SIZE(<bytes>PyTuple_GET_ITEM(pair, 1))
                memcpy(p, PyBytes_AS_STRING(<bytes>PyTuple_GET_ITEM(pair, 1)), n)
                p += n
                p[0] = 13
                p[1] = 10
                p += 2
        return p

    # --- the filters' API ---
    def get(self, name: bytes | str) -> bytes | None:
        """The value of the first end-to-end field called `name` (any case), else None."""
        lname = _lower(name)
        return self.c_get(PyBytes_AS_STRING(lname), PyBytes_GET_SIZE(lname))

    def get_all(self, name: bytes | str) -> list[bytes]:
        """Every value of the end-to-end fields called `name`, in order (filters' additions last)."""
        lname = _lower(name)
        cdef const char* c = PyBytes_AS_STRING(lname)
        cdef Py_ssize_t n = PyBytes_GET_SIZE(lname)
        cdef list out = []
        cdef Py_ssize_t i = self.c_find(c, n, 0, False)
        while i >= 0:
            out.append(self.c_value(i))
            i = self.c_find(c, n, i + 1, False)
        if self.added:
            out += [v for k, v in self.added if k.lower() == lname]
        return out

    def count(self, name: bytes | str) -> int:
        """How many end-to-end fields are called `name` (duplicates matter to some policies)."""
        lname = _lower(name)
        return self.c_count_all(PyBytes_AS_STRING(lname), PyBytes_GET_SIZE(lname))

    def __contains__(self, name: object) -> bool:
        return self.count(name) > 0

    def __iter__(self):
        """(lowercased name, value) of every end-to-end field, in head order, then the additions."""
        cdef Py_ssize_t i
        for i in range(self.n):
            if self.f[i].cls == self.forward_cls:
                yield (self.c_lname(i), self.c_value(i))
        if self.added:
            yield from list(self.added)

    def __len__(self) -> int:
        cdef Py_ssize_t i, k = 0
        for i in range(self.n):
            if self.f[i].cls == self.forward_cls:
                k += 1
        return k + (len(self.added) if self.added else 0)

    def __bool__(self) -> bool:
        return len(self) > 0

    def __eq__(self, other: object) -> bool:
        # (tests and old callers compared ctx.headers with lists of pairs)
        if isinstance(other, HeaderView):
            return list(self) == list(other)
        if isinstance(other, list):
            return list(self) == other
        return NotImplemented

    def __repr__(self) -> str:
        return f"HeaderView({list(self)!r})"

    def remove(self, name: bytes | str) -> int:
        """Stop forwarding every field called `name`; returns how many there were."""
        lname = _lower(name)
        cdef const char* c = PyBytes_AS_STRING(lname)
        cdef Py_ssize_t n = PyBytes_GET_SIZE(lname), k = 0
        cdef Py_ssize_t i = self.c_find(c, n, 0, False)
        while i >= 0:
            self.f[i].cls = F_GONE
            k += 1
            i = self.c_find(c, n, i + 1, False)
        if self.added:
            kept = [h for h in self.added if h[0].lower() != lname]
            k += len(self.added) - len(kept)
            self.added = kept
        return k

    def remove_if(self, name: bytes | str, predicate) -> int:
        """Stop forwarding the fields called `name` whose value satisfies predicate(value)."""
        lname = _lower(name)
        cdef const char* c = PyBytes_AS_STRING(lname)
        cdef Py_ssize_t n = PyBytes_GET_SIZE(lname), k = 0
        cdef Py_ssize_t i = self.c_find(c, n, 0, False)
        while i >= 0:
            if predicate(self.c_value(i)):
                self.f[i].cls = F_GONE
                k += 1
            i = self.c_find(c, n, i + 1, False)
        if self.added:
            kept = [h for h in self.added if h[0].lower() != lname or not predicate(h[1])]
            k += len(self.added) - len(kept)
            self.added = kept
        return k

    def add(self, name: bytes | str, value: bytes | str) -> None:
        """Forward one more field (after the client's); the name is sent lowercased."""
        pair = (_lower(name), value.encode("latin-1") if isinstance(value, str) else bytes(value))
        if self.added is None:
            self.added = [pair]
        else:
            self.added.append(pair)

    def set(self, name: bytes | str, value: bytes | str) -> None:
        """Replace every field called `name` with this one."""
        self.remove(name)
        self.add(name, value)

    def raw(self) -> bytes:
        """The head's bytes as they arrived (request line included)."""
        return self.buf


cdef list forwarded_pairs(HeaderView view):
    """The forwarded fields as (name as received, value) pairs: what response filters are given."""
    cdef Py_ssize_t i
    cdef const char* src = PyBytes_AS_STRING(view.buf)
    cdef list out = []
    for i in range(view.n):
        if view.f[i].cls == view.forward_cls:
            out.append((PyBytes_FromStringAndSize(src + view.f[i].name, view.f[i].nlen), view.c_value(i)))
    return out


cdef bytes response_head_view(bytes status_line, HeaderView view, list extra, bytes framing,
                              bytes request_id, bytes tail):
    """gateway._fast.wire.response_head with the upstream's forwarded fields written from the
    spans of its head (the same bytes), then `extra` (the filters' response_headers)."""
    cdef Py_ssize_t size = (PyBytes_GET_SIZE(status_line) + view.wire_size() + pairs_size(extra)
                            + PyBytes_GET_SIZE(framing) + 14 + PyBytes_GET_SIZE(request_id)
                            + 35 + PyBytes_GET_SIZE(tail) + 2)
    cdef bytes out = PyBytes_FromStringAndSize(NULL, size)
    cdef char* p = PyBytes_AS_STRING(out)
    p = put_bytes(p, status_line)
    p = view.wire_put(p)
    p = put_pairs(p, extra)
    p = put_bytes(p, framing)
    memcpy(p, b"X-Request-Id: ", 14)
    p = put_bytes(p + 14, request_id)
    memcpy(p, b"\r\nX-Content-Type-Options: nosniff\r\n", 35)
    p = put_bytes(p + 35, tail)
    p[0] = 13
    p[1] = 10
    return out


cdef Py_ssize_t pairs_size(list fields) except -1:
    cdef Py_ssize_t total = 0
    cdef object pair
    if fields is None:
        return 0
    for pair in fields:
        if type(pair) is not tuple or len(<tuple>pair) != 2:
            raise TypeError("header fields must be (name, value) tuples")
        # (<tuple> casts: a tuple item read, not a generic item lookup per field)
        if type((<tuple>pair)[0]) is not bytes or type((<tuple>pair)[1]) is not bytes:
            raise TypeError("header names and values must be bytes")
        total += PyBytes_GET_SIZE(<bytes>(<tuple>pair)[0]) + PyBytes_GET_SIZE(<bytes>(<tuple>pair)[1]) + 4
    return total


cdef char* put_pairs(char* p, list fields) noexcept:
    cdef object pair
    if fields is None:
        return p
    for pair in fields:   # (checked by pairs_size: tuples of two bytes)
        p = put_bytes(p, <bytes>(<tuple>pair)[0])
        p[0] = 58
        p[1] = 32
        p = put_bytes(p + 2, <bytes>(<tuple>pair)[1])
        p[0] = 13
        p[1] = 10
        p += 2
    return p


cdef bytes _lower(object name):
    if isinstance(name, str):
        return (<str>name).encode("latin-1").lower()
    return (<bytes?>name).lower()


def first_value(headers: object, lname: bytes) -> bytes | None:
    """The first value of field `lname` (lowercase) in ctx.headers, a HeaderView or (set by a
    filter or a test) a list of (lowercased name, value) pairs."""
    if type(headers) is HeaderView:
        return (<HeaderView>headers).c_get(PyBytes_AS_STRING(lname), PyBytes_GET_SIZE(lname))
    for name, value in headers:
        if name == lname:
            return value
    return None


def all_values(headers: object, lname: bytes) -> list[bytes]:
    """Every value of field `lname` (lowercase) in ctx.headers (a HeaderView or a list of pairs)."""
    if type(headers) is HeaderView:
        return (<HeaderView>headers).get_all(lname)
    return [value for name, value in headers if name == lname]


def view_of_request_head(data: bytes) -> HeaderView:
    """The view a request head gets (for tests and tools: the data plane calls scan_head)."""
    return scan_head(bytes(data), cH_FORWARD, True)


def view_of_response_head(data: bytes) -> HeaderView:
    return scan_head(bytes(data), cR_FORWARD, False)


cdef class HeadTracker:
    """Where each head lies in the bytes a connection feeds to llhttp, so that the head can be
    scanned once llhttp has accepted it (httptools reports no positions).

    A head begins where the previous message ended (after the CR/LF llhttp skips between
    messages): after its head for a message without body, after Content-Length more bytes for one
    with a body. A chunked body or an Upgrade gives the stream to a new parser, which starts a new
    stream here too. A head that has not ended when a feed ends is held (`hold`, bounded) and its
    complete field lines are measured against the head limits as they come, so a head over them is
    refused before it ends, as when httptools reported each field."""

    def __init__(self, Py_ssize_t hold_max, Py_ssize_t lim_fields, Py_ssize_t lim_bytes) -> None:
        self.lim_fields = lim_fields
        self.lim_bytes = lim_bytes
        self.parser = None
        self.data = b""
        self.next = 0
        self.hold = None
        self.hold_max = hold_max
        self.scan = 0
        self.fields = 0
        self.field_bytes = 0
        self.end = 0

    cdef int feeding(self, object parser, bytes data) except -1:
        if parser is not self.parser:
            self.parser = parser
            self.next = 0
            self.hold = None
        self.data = data
        return 0

    cdef int fed(self, bint in_head) except -1:
        """After llhttp consumed all of `data`: keep the start of an unfinished head. Returns 1
        when that head is over a limit already (its complete fields, or the held bytes)."""
        cdef Py_ssize_t n = PyBytes_GET_SIZE(self.data), start = self.next
        cdef const unsigned char* p
        if start >= n:
            self.next = start - n   # body bytes still to come
            self.data = b""
            return 0
        self.next = 0
        if not in_head:
            self.data = b""
            return 0   # (only the CR/LF llhttp skips between messages)
        p = <const unsigned char*>PyBytes_AS_STRING(self.data)
        if self.hold is None:
            while start < n and (p[start] == 13 or p[start] == 10):
                start += 1
            self.hold = bytearray(self.data[start:] if start else self.data)
            self.scan = 0
            self.fields = 0
            self.field_bytes = 0
        else:
            self.hold += self.data[start:] if start else self.data
        self.data = b""
        self._measure()
        return 1 if (len(self.hold) > self.hold_max or self.fields > self.lim_fields
                     or self.field_bytes > self.lim_bytes) else 0

    cdef int _measure(self) except -1:
        """Count the held head's complete field lines (each once, when its CR has come)."""
        cdef bytearray hold = self.hold
        cdef Py_ssize_t n = len(hold), pos = self.scan, eol, colon, v
        cdef const unsigned char* p = <const unsigned char*><char*>hold
        cdef const unsigned char* c
        if pos == 0:
            c = <const unsigned char*>memchr(p, 13, n)
            if c == NULL:
                return 0
            pos = c - p + 2
        while pos < n:
            c = <const unsigned char*>memchr(p + pos, 13, n - pos)
            if c == NULL:
                break
            eol = c - p
            c = <const unsigned char*>memchr(p + pos, 58, eol - pos)
            if c == NULL:
                break   # (the blank line, or a line llhttp refuses: not a field)
            colon = c - p
            v = colon + 1
            while v < eol and (p[v] == 32 or p[v] == 9):
                v += 1
            self.fields += 1
            self.field_bytes += (colon - pos) + (eol - v) + 4
            pos = eol + 2
        self.scan = pos
        return 0

    cdef int failed_at(self, Py_ssize_t pos) except -1:
        """llhttp refused the head being read at data[pos]: measure its field lines before that
        (a head already over a limit is 431, as it was when each field was reported at once)."""
        cdef bytes data = self.data
        if pos < 0 or pos > PyBytes_GET_SIZE(data):
            pos = PyBytes_GET_SIZE(data)
        self.data = data[:pos]
        return self.fed(True)

    cdef bytes _join_held(self, bytes method):
        """The bytes of a head begun in earlier reads (held) and completed in this one, joined;
        None if they are not where they must be (the stream out of step: never expected)."""
        cdef bytes data = self.data
        cdef bytearray hold = self.hold
        cdef Py_ssize_t end
        tail = bytes(hold[-3:])
        end = (tail + data[:3]).find(b"\r\n\r\n")   # a blank line across the two
        if end >= 0:
            end += 4 - len(tail)
        else:
            end = find_crlfcrlf(PyBytes_AS_STRING(data), 0, PyBytes_GET_SIZE(data))
            if end < 0:
                return None
            end += 4
        head = bytes(hold) + data[:end]
        self.hold = None
        if not head.startswith(method):
            return None
        self.end = end
        self.next = end
        return head

    cdef HeaderView take_view(self, bytes method, int32_t forward_cls, bint request):
        """The view of the head llhttp has just completed (in on_headers_complete), or None if it
        is not where it must be. A head within the bytes being fed is scanned where it lies (its
        end found by the scan itself), then given its own bytes object unless it is that whole
        read; a head begun in earlier reads is joined first (_join_held)."""
        cdef bytes data = self.data
        cdef const unsigned char* p = <const unsigned char*>PyBytes_AS_STRING(data)
        cdef Py_ssize_t n = PyBytes_GET_SIZE(data), start, end, m = PyBytes_GET_SIZE(method)
        cdef HeaderView view
        if self.hold:
            head = self._join_held(method)
            if head is None:
                return None
            try:
                return _scan(head, 0, forward_cls, request, False)
            except ValueError:
                return None
        start = self.next
        while start < n and (p[start] == 13 or p[start] == 10):
            start += 1
        if n - start < m or memcmp(p + start, PyBytes_AS_STRING(method), m) != 0:
            return None
        try:
            view = _scan(data, start, forward_cls, request, False)
        except ValueError:
            return None
        end = view.end
        self.end = end
        self.next = end
        if start != 0 or end != n:
            # (the view must not keep the whole read: a body, or pipelined requests, may follow)
            view._rebase(PyBytes_FromStringAndSize(<const char*>p + start, end - start), start)
        return view

    cdef int reset(self) except -1:
        """A new stream starts at the next byte fed (an upstream connection's next exchange)."""
        self.parser = None
        self.hold = None
        self.next = 0
        return 0

    cdef int body(self, long long length) except -1:
        """The head just taken is followed by `length` body bytes, then the next message."""
        self.next = self.end + length
        return 0

    cdef int skipped(self, Py_ssize_t n) except -1:
        """`n` body bytes went on without being fed to llhttp (its count advanced instead:
        parser_stop.pxd's skip_body): the next head begins that much sooner in what is fed next."""
        if self.next >= n:
            self.next -= n
        else:
            self.next = 0
        return 0
