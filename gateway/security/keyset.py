"""Verification keys: which algorithms each key may verify, decided by the key's type.

A key is bound to one algorithm family when it is loaded: the HS secret answers only HS256/384/512,
an RSA key only RS*/PS*, an EC key only the ES* of its curve, an Ed25519/Ed448 key only EdDSA. The
token's `alg` picks nothing but which of those allowed verifiers to try, so a token signed with
HMAC over the RSA public key's PEM text (the classic confusion) finds no key at all.
"""
from __future__ import annotations

from typing import Any

from .jwt_check import HS

RSA_ALGS = ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512")
_EC_BY_CURVE = {"secp256r1": "ES256", "secp384r1": "ES384", "secp521r1": "ES512"}


class KeyError_(ValueError):
    """A key that cannot be used; the message names what is wrong (never the key itself)."""


def algorithms_for_public_key(key: Any) -> tuple[str, ...]:
    from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa

    if isinstance(key, rsa.RSAPublicKey):
        if key.key_size < 2048:
            raise KeyError_(f"an RSA key of {key.key_size} bits (at least 2048 are required)")
        return RSA_ALGS
    if isinstance(key, ec.EllipticCurvePublicKey):
        alg = _EC_BY_CURVE.get(key.curve.name)
        if alg is None:
            raise KeyError_(f"an EC key on curve {key.curve.name} (P-256, P-384 or P-521 are supported)")
        return (alg,)
    if isinstance(key, ed25519.Ed25519PublicKey | ed448.Ed448PublicKey):
        return ("EdDSA",)
    raise KeyError_(f"a {type(key).__name__} (RSA, EC or Ed25519 public keys are supported)")


def load_public_key_file(path: str) -> tuple[Any, tuple[str, ...]]:
    """(cryptography public key, the algorithms it may verify); KeyError_ when unusable."""
    try:
        with open(path, "rb") as f:
            data = f.read(1 << 20)
    except (OSError, ValueError) as exc:
        raise KeyError_(f"cannot read {path}: {getattr(exc, 'strerror', None) or exc}") from None
    return parse_public_pem(data)


def parse_public_pem(data: bytes) -> tuple[Any, tuple[str, ...]]:
    from cryptography.hazmat.primitives.serialization import load_pem_public_key

    if b"PRIVATE KEY" in data:
        raise KeyError_("a private key (give the public key only)")
    try:
        key = load_pem_public_key(data)
    except (ValueError, TypeError):
        raise KeyError_("not a PEM public key") from None
    except Exception:  # noqa: BLE001 - cryptography raises its own types for unsupported keys
        raise KeyError_("not a supported PEM public key") from None
    return key, algorithms_for_public_key(key)


class StaticKeys:
    """GATEWAY_JWT_SECRET and GATEWAY_JWT_PUBLIC_KEY, prepared once for PyJWT."""

    def __init__(self, secret: str | None, public_key: Any | None, public_algs: tuple[str, ...]) -> None:
        import jwt

        self.by_alg: dict[str, Any] = {}
        if secret is not None:
            hmac = jwt.get_algorithm_by_name("HS256")
            prepared = hmac.prepare_key(secret.encode())
            for a in HS:
                self.by_alg[a] = prepared
        if public_key is not None:
            for a in public_algs:
                self.by_alg[a] = public_key   # PyJWT's algorithms take cryptography key objects as is

    def algorithms(self) -> tuple[str, ...]:
        return tuple(self.by_alg)

    def get(self, alg: str) -> Any:
        return self.by_alg.get(alg)
