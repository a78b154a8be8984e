"""SecurityContext: what every auth filter of one process shares.

One per process (per NodeState), built when the first runtime is built and kept across reloads
(the token cache, the key ring and the JWKS set stay warm): the JWT checker and its key sources,
the verified-token cache, the API-key ring and the revocation set (both fed by the process's
StateView), and the failure counters in node memory.

The verified-token cache: token_key(token) (an int of its last bytes: auth_fast.pyx says why) →
CachedIdentity holding the whole token, bounded (MAX_CACHED), each entry valid until its token's
`exp` (+ leeway) and dropped the moment its jti is revoked. A repeated token costs one dict
lookup, one comparison of the whole token and one float compare instead of a signature check.
"""
from __future__ import annotations

import time
import weakref
from typing import TYPE_CHECKING, Any

from gateway._fast.counters import CounterArray

from .apikeys import PREFIX as KEYS_PREFIX
from .apikeys import KeyRing
from .auth_fast import CachedIdentity as CachedIdentity  # compiled: the cache hit reads it in C
from .auth_fast import token_key
from .jwks import JwksKeys
from .jwt_check import ASYMMETRIC, HS, JwtChecker
from .keyset import StaticKeys, load_public_key_file
from .revocation import PREFIX as REVOKED_PREFIX
from .revocation import Revocations

if TYPE_CHECKING:
    import asyncio

    from gateway.config.env import Settings
    from gateway.state.node import NodeState, Placer

MAX_CACHED = 50_000
METHODS = ("jwt", "api_key")
REASONS = ("missing", "malformed", "bad_signature", "expired", "not_yet_valid", "bad_claims",
           "revoked", "unknown_key", "insufficient_scope")
FAILURES_NAME = "auth/failures"
FAILURES_SIZE = CounterArray.nbytes(len(METHODS) * len(REASONS))
SURGE_WINDOW = 10.0           # seconds
SURGE_THRESHOLD = 200         # failures in one window of one worker → auth_failure_surge


def failure_index(method: str, reason: str) -> int:
    return METHODS.index(method) * len(REASONS) + REASONS.index(reason)


def build_checker(settings: Settings) -> tuple[JwtChecker | None, JwksKeys | None]:
    """The JWT checker for the process's settings (None when no JWT key is configured)."""
    public: Any = None
    public_algs: tuple[str, ...] = ()
    if settings.jwt_public_key:
        public, public_algs = load_public_key_file(settings.jwt_public_key)
    static = StaticKeys(settings.jwt_secret, public, public_algs)
    jwks = JwksKeys(settings.jwt_jwks_url) if settings.jwt_jwks_url else None
    available = set(static.algorithms()) | (set(ASYMMETRIC) if jwks else set())
    if not available:
        return None, None
    algs = tuple(a for a in (settings.jwt_algorithms or HS + ASYMMETRIC) if a in available)

    def keys(alg: str, kid: str | None) -> Any:
        key = static.get(alg)
        if key is None and jwks is not None:
            key = jwks.get(alg, kid)
        return key

    checker = JwtChecker(algs, keys, issuer=settings.jwt_issuer, audience=settings.jwt_audience,
                         leeway=settings.jwt_leeway, org_claim=settings.jwt_org_claim,
                         on_unknown_kid=jwks.unknown_kid if jwks is not None else None)
    return checker, jwks


class SecurityContext:
    def __init__(self, settings: Settings, state: NodeState | None = None,
                 loop: asyncio.AbstractEventLoop | None = None) -> None:
        from gateway.state.view import StateView

        from .audit import configure

        configure(settings.audit_log)
        self.settings = settings
        self.state = state
        self.checker, self.jwks = build_checker(settings)
        self.keyring = KeyRing()
        self.revocations = Revocations()
        self.revocations.listeners.append(self._drop_revoked)
        # token_key(token) -> its identity; ident.token is the whole token (auth_fast.pyx).
        self.cache: dict[int, CachedIdentity] = {}
        self.failures = CounterArray(len(METHODS) * len(REASONS))
        self._surge_start = 0.0
        self._surge_count = 0
        view = state.view if state is not None else StateView()
        view.subscribe(KEYS_PREFIX, self.keyring.on_change)
        view.subscribe(REVOKED_PREFIX, self.revocations.on_change)
        if self.jwks is not None:
            self.jwks.on_replace = self._drop_unpublished
            if loop is not None:
                self.jwks.start(loop)

    def place(self, placer: Placer | None) -> None:
        """Counters in node memory (once per runtime build: the name stays placed across reloads)."""
        if placer is None:
            return
        buf = placer.place(FAILURES_NAME, FAILURES_SIZE, kind="counters")
        if not self.failures.shared:
            self.failures = CounterArray(len(METHODS) * len(REASONS), buf)

    # --- the token cache ------------------------------------------------------------------------
    def cached(self, token: bytes) -> CachedIdentity | None:
        """The cached identity of exactly this token, if any (expired or not)."""
        ident = self.cache.get(token_key(token))
        return ident if ident is not None and ident.token == token else None

    def cache_put(self, token: bytes, ident: CachedIdentity) -> None:
        cache = self.cache
        if len(cache) >= MAX_CACHED:
            now = time.time()
            for t in [t for t, e in cache.items() if e.until <= now]:
                del cache[t]
            while len(cache) >= MAX_CACHED:
                del cache[next(iter(cache))]     # the oldest insertion
        ident.token = token
        cache[token_key(token)] = ident

    def _drop_unpublished(self, kids: set[str]) -> None:
        """A JWKS fetch replaced the key set: tokens verified with a kid no longer published are
        no longer valid (SPEC §8), cached or not."""
        for t in [t for t, e in self.cache.items() if e.kid is not None and e.kid not in kids]:
            del self.cache[t]

    def _drop_revoked(self, jti: str) -> None:
        for t in [t for t, e in self.cache.items() if e.jti == jti]:
            del self.cache[t]

    # --- failures -----------------------------------------------------------------------------------
    def failed(self, method: str, reason: str, now: float) -> None:
        self.failures.inc(failure_index(method, reason))
        if now - self._surge_start > SURGE_WINDOW:
            self._surge_start = now
            self._surge_count = 0
        self._surge_count += 1
        if self._surge_count == SURGE_THRESHOLD and self.state is not None:
            self.state.emit("auth_failure_surge",
                            details={"failures": SURGE_THRESHOLD, "window": SURGE_WINDOW, "reason": reason})

    def redis_down(self) -> bool:
        return self.state is not None and self.state.status.get("redis") == "down"

    def close(self) -> None:
        if self.jwks is not None:
            self.jwks.close()


_contexts: weakref.WeakKeyDictionary[Any, SecurityContext] = weakref.WeakKeyDictionary()
_stateless: dict[int, SecurityContext] = {}


def security_for(settings: Settings, state: NodeState | None,
                 loop: asyncio.AbstractEventLoop | None = None) -> SecurityContext:
    """The process's SecurityContext for `state` (built on first use, kept across reloads)."""
    if state is None:
        ctx = _stateless.get(id(settings))
        if ctx is None:
            ctx = _stateless[id(settings)] = SecurityContext(settings, None, loop)
        return ctx
    ctx = _contexts.get(state)
    if ctx is None:
        ctx = _contexts[state] = SecurityContext(settings, state, loop)
    return ctx
