"""The identity an authenticated request carries upstream (SPEC §4).

The data plane removes every client-supplied `X-Consumer-*` and `X-Auth-Method` field before any
filter runs (gateway/http/wire.py, H_OWNED), so the only copies the upstream sees are these.
"""
from __future__ import annotations


def identity_headers(sub: str, org: str | None, scopes: frozenset[str], method: str,
                     key_id: str | None = None) -> list[tuple[bytes, bytes]]:
    """SPEC §4's identity headers for upstream (client copies are stripped by the data plane)."""
    out = [(b"X-Consumer-Id", sub.encode()), (b"X-Auth-Method", method.encode())]
    if org is not None:
        out.append((b"X-Consumer-Org", org.encode()))
    if scopes:
        out.append((b"X-Consumer-Scopes", " ".join(sorted(scopes)).encode()))
    if key_id is not None:
        out.append((b"X-Consumer-Key-Id", key_id.encode()))
    return out
