"""Token forging helpers for the security tests: sign exactly the bytes a test wants.

PyJWT would normalize what it signs (one JSON encoding, its own header); attack tokens need
duplicate keys, strings where numbers belong, extra header fields, so they are assembled here
from raw JSON text and signed with the real keys.
"""
from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from typing import Any

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

SECRET = "s3cret-for-tests-0123456789abcdef-xyz"     # ≥ 32 bytes (SPEC §2)


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def rsa_keypair() -> tuple[Any, bytes]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    return key, pem


def raw_token(header: str | dict[str, Any], payload: str | dict[str, Any], *, rsa_key: Any = None,
              secret: str | bytes | None = None) -> str:
    """header/payload as JSON text (kept verbatim) or dicts; signed RS256 with rsa_key, HS256 with
    secret, or unsigned (empty signature) with neither."""
    h = header if isinstance(header, str) else json.dumps(header)
    p = payload if isinstance(payload, str) else json.dumps(payload)
    signing_input = f"{b64(h.encode())}.{b64(p.encode())}"
    if rsa_key is not None:
        sig = rsa_key.sign(signing_input.encode(), padding.PKCS1v15(), hashes.SHA256())
    elif secret is not None:
        k = secret.encode() if isinstance(secret, str) else secret
        sig = hmac.new(k, signing_input.encode(), hashlib.sha256).digest()
    else:
        sig = b""
    return f"{signing_input}.{b64(sig)}"


def claims(**over: Any) -> dict[str, Any]:
    c: dict[str, Any] = {"sub": "alice", "org": "acme", "scope": "bench:read users:read",
                         "exp": int(time.time()) + 600, "iat": int(time.time()), "jti": "j-1"}
    c.update(over)
    return {k: v for k, v in c.items() if v is not None}
