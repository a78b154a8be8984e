"""API keys: `gw_<id>_<secret>`, stored as `keys/<id>` with a keyed hash of the secret.

- <id> is 12 hex digits: the public prefix by which a key is found (shown by `list`, used by
  `revoke`); <secret> is 32 random bytes, base64url. The key itself is shown once, at creation.
- Stored: HMAC-SHA256(salt, secret) with a random per-key salt, never the secret. The secret
  carries 256 bits of entropy, so the hash cannot be searched; the salt keeps two stores' hashes
  unrelated. Verification recomputes the HMAC and compares with `hmac.compare_digest` (constant
  time).
- Records live in the dynamic state (`state.control.put("keys/<id>", record)`): an admin or CLI
  write reaches every worker and, with Redis, every instance within 1 s, and survives a restart
  when Redis is configured. Each process compiles the records it sees into a KeyRing (a dict by
  id) through its StateView subscription; the hot path reads only that dict.
"""
from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import time
from typing import Any

from .identity import identity_headers

PREFIX = "keys/"
_KEY = re.compile(r"gw_([0-9a-f]{12})_([A-Za-z0-9_-]{43})")
_ID = re.compile(r"[0-9a-f]{12}")


def valid_id(key_id: str) -> bool:
    return _ID.fullmatch(key_id) is not None


def digest(salt: bytes, secret: str) -> str:
    return hmac.new(salt, secret.encode(), hashlib.sha256).hexdigest()


def new_key(name: str, user: str | None, org: str | None, scopes: list[str],
            expires_in: float | None, now: float | None = None) -> tuple[str, dict[str, Any]]:
    """(the key, its record for `keys/<id>`)."""
    now = time.time() if now is None else now
    key_id = secrets.token_hex(6)
    secret = secrets.token_urlsafe(32)
    salt = secrets.token_bytes(16)
    record = {
        "id": key_id, "prefix": f"gw_{key_id}", "name": name, "user": user, "org": org,
        "scopes": list(scopes), "created": now,
        "expires": now + expires_in if expires_in is not None else None,
        "salt": salt.hex(), "hash": digest(salt, secret),
    }
    return f"gw_{key_id}_{secret}", record


def public(record: dict[str, Any]) -> dict[str, Any]:
    """What GET /keys and `apikey list` show: everything but the salt and the hash."""
    return {k: v for k, v in record.items() if k not in ("salt", "hash")}


def fingerprint(value: str | bytes) -> str:
    """8 hex digits naming a secret in the audit log without revealing it."""
    data = value.encode() if isinstance(value, str) else value
    return hashlib.sha256(data).hexdigest()[:8]


class KeyEntry:
    __slots__ = ("id", "salt", "hash", "user", "org", "scopes", "expires", "headers")

    def __init__(self, record: dict[str, Any]) -> None:
        self.id = str(record["id"])
        self.salt = bytes.fromhex(record["salt"])
        self.hash = str(record["hash"])
        self.user = record.get("user") or record.get("name") or self.id
        self.org = record.get("org")
        self.scopes = frozenset(record.get("scopes") or ())
        exp = record.get("expires")
        self.expires = float(exp) if isinstance(exp, int | float) else None
        self.headers = identity_headers(self.user, self.org, self.scopes, "api_key", self.id)


class KeyRing:
    """id → KeyEntry, kept current from `keys/` changes."""

    def __init__(self) -> None:
        self.entries: dict[str, KeyEntry] = {}

    def on_change(self, key: str, value: Any) -> None:
        key_id = key[len(PREFIX):]
        if value is None:
            self.entries.pop(key_id, None)
            return
        try:
            self.entries[key_id] = KeyEntry(value)
        except (KeyError, ValueError, TypeError):
            self.entries.pop(key_id, None)     # a record we cannot read admits nobody

    def check(self, key: str, now: float) -> tuple[KeyEntry | None, str]:
        """(entry, "") when the key is valid; else (None, reason). Reason "unknown_id" means the
        id is not in this process's ring (the caller decides whether that is 401 or 503)."""
        m = _KEY.fullmatch(key)
        if m is None:
            return None, "malformed"
        entry = self.entries.get(m.group(1))
        if entry is None:
            return None, "unknown_id"
        if not hmac.compare_digest(digest(entry.salt, m.group(2)), entry.hash):
            return None, "bad_signature"
        if entry.expires is not None and entry.expires <= now:
            return None, "expired"
        return entry, ""
