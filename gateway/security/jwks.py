"""The JWKS key set (GATEWAY_JWT_JWKS_URL): fetched in the background, never on the request path.

- At start, and every REFRESH seconds after, the set is fetched; a successful fetch replaces the
  whole set (a kid no longer published is refused), a failed one keeps the last good set.
- A token with an unknown kid asks for a refetch: single-flight (one fetch at a time) and at most
  one per COOLDOWN seconds, however many unknown kids arrive (a flood of random kids costs one
  fetch per cooldown). The request itself is answered 401 at once: it does not wait for the fetch.
  Why not wait: an unknown kid is far more often an attacker's or a stale client's than a freshly
  rotated one, a wait would let a flood of them park requests on the loop, and an issuer that
  rotates keys publishes the new kid before signing with it (SPEC §8: picked up within 10 s).
- Bounds: the body is read up to MAX_BODY bytes with a deadline of TIMEOUT seconds in all; at most
  MAX_KEYS keys are kept. A key whose `kty`/`crv` does not fit its `alg` is skipped.

The fetch is a plain HTTP/1.0 GET over asyncio streams (http or https): one request, no redirects,
`Connection: close`, so no client library is needed for it.
"""
from __future__ import annotations

import asyncio
import json
import logging
import ssl
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

from .keyset import KeyError_, algorithms_for_public_key

log = logging.getLogger("gateway.security")

COOLDOWN = 10.0
REFRESH = 300.0
TIMEOUT = 5.0
MAX_BODY = 1 << 20
MAX_KEYS = 256


class JwksError(Exception):
    pass


def parse_jwks(body: bytes) -> dict[str, tuple[Any, tuple[str, ...]]]:
    """kid → (public key, algorithms it may verify). JwksError when the document is unusable."""
    import jwt

    try:
        doc = json.loads(body)
    except (ValueError, RecursionError):
        raise JwksError("not JSON") from None
    keys = doc.get("keys") if isinstance(doc, dict) else None
    if not isinstance(keys, list):
        raise JwksError("no 'keys' array")
    out: dict[str, tuple[Any, tuple[str, ...]]] = {}
    for jwk in keys[:MAX_KEYS]:
        if not isinstance(jwk, dict) or not isinstance(jwk.get("kid"), str):
            continue
        if jwk.get("use", "sig") != "sig" or jwk.get("kty") == "oct":
            continue        # encryption keys and shared secrets are never verification keys here
        try:
            key = jwt.PyJWK(jwk).key
            algs = algorithms_for_public_key(key)
        except (jwt.PyJWKError, KeyError_, ValueError, TypeError):
            continue
        except Exception:  # noqa: BLE001 - one bad key must not drop the set
            continue
        if isinstance(jwk.get("alg"), str):
            if jwk["alg"] not in algs:
                continue
            algs = (jwk["alg"],)
        out[jwk["kid"]] = (key, algs)
    return out


async def http_get(url: str, timeout: float = TIMEOUT, max_body: int = MAX_BODY) -> bytes:
    """GET `url` → the body of a 200 answer; JwksError otherwise. Bounded in time and size."""
    parts = urlsplit(url)
    https = parts.scheme == "https"
    host = parts.hostname or ""
    port = parts.port or (443 if https else 80)
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")

    async def exchange() -> bytes:
        reader, writer = await asyncio.open_connection(
            host, port, ssl=ssl.create_default_context() if https else None)
        try:
            hostport = host if parts.port is None else f"{host}:{parts.port}"
            writer.write(f"GET {path} HTTP/1.0\r\nHost: {hostport}\r\nAccept: application/json\r\n"
                         f"Connection: close\r\n\r\n".encode())
            data = await reader.read(max_body + 65536)
            while data and len(data) <= max_body + 65536:
                more = await reader.read(65536)
                if not more:
                    break
                data += more
        finally:
            writer.close()
        head, sep, body = data.partition(b"\r\n\r\n")
        if not sep:
            raise JwksError("no complete response head")
        status = head.split(b"\r\n", 1)[0].split()
        if len(status) < 2 or status[1] != b"200":
            raise JwksError(f"status {status[1].decode('latin-1') if len(status) > 1 else '?'}")
        if len(body) > max_body:
            raise JwksError(f"body over {max_body} bytes")
        return body

    try:
        return await asyncio.wait_for(exchange(), timeout)
    except TimeoutError:
        raise JwksError(f"no answer within {timeout} s") from None
    except OSError as exc:
        raise JwksError(str(exc) or type(exc).__name__) from None


class JwksKeys:
    """kid → key, kept current in the background. `get(alg, kid)` is the hot path: one dict lookup."""

    def __init__(self, url: str, loop: asyncio.AbstractEventLoop | None = None, *,
                 cooldown: float = COOLDOWN, refresh: float = REFRESH,
                 clock: Callable[[], float] = time.monotonic,
                 fetch: Callable[[str], Any] = http_get) -> None:
        self.url = url
        self.loop = loop
        self.cooldown = cooldown
        self.refresh = refresh
        self.clock = clock
        self._fetch = fetch
        self.keys: dict[str, tuple[Any, tuple[str, ...]]] = {}
        self.fetches = 0             # attempts (tests read these)
        self.failures = 0
        self._last = -1e18           # clock of the last attempt
        self._pending: asyncio.Task[None] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._closed = False
        self.on_replace: Callable[[set[str]], None] | None = None   # called with the new kids

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self._kick()

    def get(self, alg: str, kid: str | None) -> Any:
        if kid is None:
            return None
        entry = self.keys.get(kid)
        if entry is None or alg not in entry[1]:
            return None
        return entry[0]

    def unknown_kid(self, kid: str | None) -> None:
        """A token named a kid we do not have: refetch unless one ran within the cooldown."""
        if self._pending is None and self.clock() - self._last >= self.cooldown:
            self._kick()

    def _kick(self) -> None:
        if self._closed or self.loop is None or self._pending is not None:
            return
        self._last = self.clock()
        self._pending = self.loop.create_task(self._run())

    async def _run(self) -> None:
        self.fetches += 1
        try:
            keys = parse_jwks(await self._fetch(self.url))
            self.keys = keys
            if self.on_replace is not None:
                self.on_replace(set(keys))
            log.info("JWKS: %d keys from %s", len(keys), self.url)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - the endpoint is a peer: keep the last good set
            self.failures += 1
            log.warning("JWKS fetch from %s failed (%s): keeping the last %d keys", self.url, exc, len(self.keys))
        finally:
            self._pending = None
            if not self._closed and self.loop is not None:
                if self._timer is not None:
                    self._timer.cancel()
                self._timer = self.loop.call_later(self.refresh, self._kick)

    def close(self) -> None:
        self._closed = True
        if self._timer is not None:
            self._timer.cancel()
        if self._pending is not None:
            self._pending.cancel()
