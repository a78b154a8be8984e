"""Routes and the compiled Router: request (method, host, path) → Route, or a 404/405 LocalReply.

Matching rules (what an nginx/Kong/Envoy operator expects; README documents the same):

1. Host first, like nginx server blocks and Envoy virtual hosts: routes whose `host` equals the
   request's host (case-insensitive, port and trailing dot ignored) are tried before routes without
   a host. A request falls through to the host-less routes when none of its host's routes match.
2. Within each of those two tiers: exact routes (`path = "=/x"`) first, then prefix routes, longest
   prefix first. A prefix matches on a path-segment boundary: "/api/users" matches /api/users and
   /api/users/42 but not /api/usersX. A prefix ending in "/" ("/api/") matches whatever starts with
   it (so /api/x, but not /api). "/" matches every path.
3. Methods take part in matching (as in Kong and Envoy): the first route in that order whose
   `methods` include the request method (or that has no `methods`) wins; ties between routes with
   the same host and path go by declaration order.
4. When routes match the path but none allows the method → 405 with `Allow` listing the union of
   their methods. When no route matches the path → 404.

`match` runs on every request, so the tables are built once here: per host tier, a dict for exact
paths and a trie of prefixes keyed by path segment (like nginx's static location tree and the radix
trees of Kong and APISIX). A match costs one dict lookup, then one dict lookup per path segment
while the trie goes that deep, then a walk back up the routed nodes it passed: its cost depends on
the path's depth and not on how many routes there are. Rebuilding from a route list is linear in it.
"""
from collections.abc import Iterator, Sequence
from typing import Any

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from cpython.dict cimport PyDict_GetItem
from cpython.ref cimport PyObject
from libc.string cimport memchr, memcpy

from gateway.pipeline.chain import EMPTY_CHAIN, FilterChain
from gateway.pipeline.reply import LocalReply

_MISSING: Any = object()
cdef char _SLASH_C = 47  # ord("/")


class Route:
    """One compiled route. Immutable by convention; shared by every request it matches."""

    __slots__ = (
        "name", "service", "methods", "allow", "host", "path", "exact", "strip_prefix",
        "timeout", "retries", "websocket", "chain", "config", "_strip_len", "unavailable",
    )

    def __init__(
        self,
        name: str,
        service: Any,
        path: bytes | str,
        *,
        exact: bool = False,
        methods: Sequence[bytes | str] | None = None,
        host: bytes | str | None = None,
        strip_prefix: bool = False,
        timeout: float | None = None,
        retries: int = 0,
        websocket: bool = False,
        chain: FilterChain = EMPTY_CHAIN,
        config: Any = None,
    ) -> None:
        self.name = name
        self.service = service
        # ctx -> LocalReply when the service has no target for a request (circuits open, none
        # healthy): the route's prepared fallback (gateway/discovery/fallback.py); None: the
        # data plane's plain 503 (replies.NO_TARGET).
        self.unavailable: Any = None
        self.path = path.encode("ascii") if isinstance(path, str) else path
        if not self.path.startswith(b"/"):
            raise ValueError(f"route path must start with '/': {self.path!r}")
        self.exact = exact
        if methods is None:
            self.methods: frozenset[bytes] | None = None
            self.allow = b""
        else:
            ms = [m.encode("ascii") if isinstance(m, str) else m for m in methods]
            ms = list(dict.fromkeys(m.upper() for m in ms))
            self.methods = frozenset(ms)
            self.allow = b", ".join(ms)
        if isinstance(host, str):
            host = host.encode("ascii")
        self.host = host.lower() if host is not None else None
        self.strip_prefix = strip_prefix
        self.timeout = timeout
        self.retries = retries
        self.websocket = websocket   # Upgrade requests are tunnelled (else refused: 400)
        self.chain = chain
        self.config = config
        # How many leading bytes strip_prefix removes. A prefix ending in "/" keeps its slash so the
        # upstream path still starts with "/"; "/" itself strips nothing.
        if self.exact or not self.path.endswith(b"/"):
            self._strip_len = len(self.path)
        else:
            self._strip_len = len(self.path) - 1

    @classmethod
    def from_config(cls, rc: Any, service: Any, chain: FilterChain = EMPTY_CHAIN) -> Route:
        return cls(
            rc.name, service, rc.path, exact=rc.exact, methods=rc.methods, host=rc.host,
            strip_prefix=rc.strip_prefix, timeout=rc.timeout, retries=rc.retries,
            websocket=rc.websocket, chain=chain,
            config=rc,
        )

    def upstream_path(self, path: bytes) -> bytes:
        """The path (or path?query target) to send upstream: strip_prefix applied, always "/…".

        Route "/api/users" with strip_prefix: /api/users/42 → /42, /api/users → /,
        /api/users?x=1 → /?x=1. Without strip_prefix the path is returned unchanged.
        """
        return stripped_path(path, self._strip_len) if self.strip_prefix else path

    def allows(self, method: bytes) -> bool:
        return self.methods is None or method in self.methods

    def __repr__(self) -> str:
        where = (self.host or b"*").decode() + ("=" if self.exact else "") + self.path.decode()
        return f"Route({self.name!r}, {where})"


cdef bytes stripped_path(bytes path, Py_ssize_t k):
    """path with its first k bytes (a route's strip_prefix) removed, always starting with "/":
    Route.upstream_path, and the data plane's C call for it (request.pyx)."""
    cdef Py_ssize_t n = PyBytes_GET_SIZE(path)
    cdef const char* p = PyBytes_AS_STRING(path)
    cdef bytes out
    if k > n:
        k = n
    if k < n and p[k] == 47:
        return path if k == 0 else PyBytes_FromStringAndSize(p + k, n - k)
    out = PyBytes_FromStringAndSize(NULL, n - k + 1)
    PyBytes_AS_STRING(out)[0] = 47
    memcpy(PyBytes_AS_STRING(out) + 1, p + k, n - k)
    return out


cdef inline tuple _with_methods(rs):
    return tuple([(r.methods, r) for r in rs])


cdef inline object _allowed(tuple rs, bytes method):
    """The first route of (methods, route) pairs that takes the method, else None."""
    cdef tuple mr
    for mr in rs:
        m = mr[0]
        if m is None or method in m:
            return mr[1]
    return None


cdef class _Node:
    """One path segment of a tier's prefix trie. A prefix route lives on the node its last segment
    leads to: "/a/b" as `bare` on a → b, "/a/b/" as `slash` on the same node (it only matches when
    the path goes on past b), "/" as `slash` on the root."""

    def __cinit__(self) -> None:
        self.children = None
        self.bare = ()
        self.slash = ()
        self.up = NULL

    cdef _Node child(self, bytes segment):
        if self.children is None:
            self.children = {}
        node = self.children.get(segment)
        if node is None:
            node = self.children[segment] = _Node()
        return node


cdef inline bint _has_routes(_Node node):
    return len(node.bare) > 0 or len(node.slash) > 0


cdef inline unsigned int exact_bit(bytes path) noexcept:
    """The exact-path filter's bit for a path: its length, last and middle byte, mixed."""
    cdef Py_ssize_t n = PyBytes_GET_SIZE(path)
    cdef const unsigned char* s = <const unsigned char*>PyBytes_AS_STRING(path)
    if n == 0:
        return 0
    return <unsigned int>(<size_t>n * 131 + s[n - 1] * 31 + s[n >> 1]) & 255


cdef class _Table:
    """The routes of one host tier, indexed for matching: a dict of exact paths and a segment trie
    of prefixes. A match costs one dict lookup for the exact path, then one per path segment while
    the trie has that segment; the number of routes does not enter."""

    def __init__(self, routes: Sequence[Route]) -> None:
        exact = {}
        bare = {}
        slash = {}
        for r in routes:  # declaration order is kept inside every list
            if r.exact:
                exact.setdefault(r.path, []).append(r)
            elif r.path.endswith(b"/"):
                slash.setdefault(r.path[:len(r.path) - 1], []).append(r)
            else:
                bare.setdefault(r.path, []).append(r)
        self.exact = {p: _with_methods(rs) for p, rs in exact.items()}
        cdef unsigned int bit
        self.exact_filter[:] = [0, 0, 0, 0]
        for p in self.exact:
            bit = exact_bit(p)
            self.exact_filter[bit >> 6] |= 1ULL << (bit & 63)
        self.trie = _Node()
        cdef _Node node
        for lists, is_slash in ((bare, False), (slash, True)):
            for key, rs in lists.items():
                # key is the prefix without its trailing slash: "" (the "/" route) or "/s1/…/sk"
                node = self.trie
                if key:
                    for segment in key[1:].split(b"/"):
                        node = node.child(segment)
                if is_slash:
                    node.slash = _with_methods(rs)
                else:
                    node.bare = _with_methods(rs)
        self.nodes = _link(self.trie)

    cdef _Node walk(self, bytes path, bint *more):
        """The deepest trie node the path leads to; *more: the path goes on past it (so that node's
        slash-ended prefixes match). Every ancestor of that node is a boundary prefix of the path."""
        cdef _Node node = self.trie
        cdef const char *s = PyBytes_AS_STRING(path)
        cdef Py_ssize_t n = PyBytes_GET_SIZE(path), start = 1, end
        cdef const char *slash
        cdef PyObject *found
        more[0] = True
        if n == 0 or s[0] != _SLASH_C:
            return node  # not a path ("*", ""): only "/" can take it, as it always did
        while node.children is not None:
            slash = <const char *>memchr(s + start, _SLASH_C, n - start)
            end = (slash - s) if slash != NULL else n
            found = PyDict_GetItem(node.children, PyBytes_FromStringAndSize(s + start, end - start))
            if found == NULL:
                return node
            node = <_Node>found
            if end == n:
                more[0] = False
                return node
            start = end + 1
        return node

    cdef object find(self, bytes method, bytes path):
        """First route matching path and method, in priority order (the hot path)."""
        cdef PyObject *rs = NULL
        cdef bint more
        # The dict lookup hashes the whole path (a new bytes object each request: ~300
        # instructions), so a 256-bit filter of the exact paths' length and two of their bytes
        # goes first: most paths that are no exact route's skip it (all do when there is none).
        cdef unsigned int bit = exact_bit(path)
        if self.exact_filter[bit >> 6] >> (bit & 63) & 1:
            rs = PyDict_GetItem(self.exact, path)
        if rs != NULL:
            r = _allowed(<tuple>rs, method)
            if r is not None:
                return r
        cdef _Node node = self.walk(path, &more)
        # Longest prefix first: a deeper node's prefixes are longer than its ancestors', and on one
        # node "/a/b/" is longer than "/a/b".
        if more and len(node.slash):
            r = _allowed(node.slash, method)
            if r is not None:
                return r
        if len(node.bare):
            r = _allowed(node.bare, method)
            if r is not None:
                return r
        while node.up != NULL:
            node = <_Node>node.up
            r = _allowed(node.slash, method)
            if r is None:
                r = _allowed(node.bare, method)
            if r is not None:
                return r
        return None

    def path_matches(self, path: bytes) -> Iterator[Route]:
        """Every route matching the path, any method, in priority order (only for the 405 answer)."""
        cdef bint more
        cdef _Node node = self.walk(path, &more)
        for _, r in self.exact.get(path, ()):
            yield r
        if more:
            for _, r in node.slash:
                yield r
        for _, r in node.bare:
            yield r
        while node.up != NULL:
            node = <_Node>node.up
            for _, r in node.slash + node.bare:
                yield r


cdef Py_ssize_t _link(_Node root):
    """Point every node at its nearest proper ancestor holding routes, so that backing out of a
    walk skips the route-less nodes in between. Iterative: a route's depth is the operator's."""
    cdef Py_ssize_t count = 0
    cdef _Node node, child
    todo = [(root, None)]
    while todo:
        node, holder = todo.pop()
        count += 1
        node.up = <PyObject *>holder if holder is not None else NULL
        if _has_routes(node):
            holder = node
        if node.children is not None:
            for child in node.children.values():
                todo.append((child, holder))
    return count


def normalize_host(host: bytes) -> bytes:
    """Request Host → the form route hosts are stored in: lowercase, no port, no trailing dot."""
    if host[:1] == b"[":                      # IPv6 literal: the port follows "]"
        j = host.find(b"]")
        if j > 0:
            host = host[: j + 1]
    else:
        j = host.find(b":")
        if j >= 0:
            host = host[:j]
    if host.endswith(b"."):
        host = host[:len(host) - 1]  # (no negative index: wraparound is off in compiled code)
    return host.lower()


cdef class Router:
    """Compiled matcher over a route list (declaration order matters for ties)."""

    # Raw Host header → its tier table (or None). Normalizing costs more than the rest of a match,
    # and real traffic repeats a handful of Host values. Bounded, so random Host headers cannot
    # grow it: when full it is emptied and refills with what traffic actually sends.
    HOST_CACHE_SIZE = 256

    def __init__(self, routes: Sequence[Route]) -> None:
        self.routes = tuple(routes)
        by_host: dict[bytes, list[Route]] = {}
        for r in self.routes:
            if r.host is not None:
                by_host.setdefault(r.host, []).append(r)
        self._hosts = {h: _Table(rs) for h, rs in by_host.items()}
        self._default = _Table([r for r in self.routes if r.host is None])
        self._host_cache = {}

    def _host_table(self, host: bytes) -> _Table | None:
        try:
            return self._host_cache[host]
        except KeyError:
            pass
        t = self._hosts.get(normalize_host(host))
        if len(self._host_cache) >= self.HOST_CACHE_SIZE:
            # Start over rather than stop caching: a burst of junk Host values early on must not
            # leave the real ones uncached for the life of the config.
            self._host_cache.clear()
        self._host_cache[host] = t
        return t

    cpdef object match(self, bytes method, bytes host, bytes path):
        """Route for the request, or LocalReply 404 / 405 (with Allow)."""
        if self._hosts:
            t = self._host_cache.get(host, _MISSING)
            if t is _MISSING:
                t = self._host_table(host)
            if t is not None:
                r = (<_Table>t).find(method, path)
                if r is not None:
                    return r
        r = self._default.find(method, path)
        if r is not None:
            return r
        return self._miss(method, host, path)

    def _miss(self, method: bytes, host: bytes, path: bytes) -> LocalReply:
        matched = []
        if self._hosts:
            t = self._host_table(host)
            if t is not None:
                matched.extend(t.path_matches(path))
        matched.extend(self._default.path_matches(path))
        if not matched:
            return LocalReply(404, "not_found", "No route matches this request.")
        allow = {}
        for r in matched:
            # A route without `methods` allows everything and would have matched; so every route
            # here has a method list and the union is finite.
            for m in r.allow.split(b", "):
                allow[m] = None
        return LocalReply(
            405, "method_not_allowed",
            f"Method {method.decode('latin-1')} is not allowed here.",
            headers=[(b"Allow", b", ".join(allow))],
        )
