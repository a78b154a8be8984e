"""The routing rules as plainly as they can be written: a reference model for the compiled Router.

It follows the rules of gateway/routing.pyx's docstring (and README) by brute force: every route of
the request's tiers is checked against the path, the candidates are sorted by priority, the first
that takes the method wins. Slow on purpose (it looks at every route); tests compare the router's
answers with it on generated route tables and requests.
"""
from __future__ import annotations

from collections.abc import Sequence

from gateway.routing import Route, normalize_host

Outcome = tuple[str, object]   # ("route", name) | ("reply", 404) | ("reply", (405, allow))


def path_ok(r: Route, path: bytes) -> bool:
    """Does route r's path rule take this request path (methods aside)?"""
    if r.exact:
        return path == r.path
    if r.path == b"/":
        return True                      # "/" takes every request target, even "*" or ""
    if r.path.endswith(b"/"):
        return path.startswith(r.path)   # "/api/" takes what starts with it (not "/api")
    return path == r.path or path.startswith(r.path + b"/")   # a segment boundary


def candidates(rs: Sequence[Route], tier: Sequence[Route], path: bytes) -> list[Route]:
    """Routes of one tier that take the path: exact first, then longest prefix, then declaration."""
    return sorted((r for r in tier if path_ok(r, path)),
                  key=lambda r: (not r.exact, -len(r.path), rs.index(r)))


def tiers(rs: Sequence[Route], host: bytes) -> list[list[Route]]:
    h = normalize_host(host)
    return [[r for r in rs if r.host is not None and r.host == h], [r for r in rs if r.host is None]]


def reference(rs: Sequence[Route], method: bytes, host: bytes, path: bytes) -> Outcome:
    matched: list[Route] = []
    for tier in tiers(rs, host):
        cands = candidates(rs, tier, path)
        for r in cands:
            if r.methods is None or method in r.methods:
                return ("route", r.name)
        matched += cands
    if not matched:
        return ("reply", 404)
    allow: dict[bytes, None] = {}
    for r in matched:
        for m in r.allow.split(b", "):
            allow[m] = None
    return ("reply", (405, b", ".join(allow)))


def takes(r: Route, host: bytes, path: bytes) -> bool:
    """Could route r have any say in this request (its host tier and its path rule)?"""
    return (r.host is None or r.host == normalize_host(host)) and path_ok(r, path)
