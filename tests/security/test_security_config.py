"""The JWT variables (SPEC §2) and GATEWAY_AUDIT_LOG: accepted forms, and exit-2 refusals naming
the variable (a malformed PEM, an unreadable key file, a JWKS URL that is not http(s), `none`)."""
from __future__ import annotations

from pathlib import Path

import pytest

from gateway.config.env import load_settings
from gateway.config.errors import EnvError
from tests.security.tokens import rsa_keypair


def refused(env: dict[str, str]) -> EnvError:
    with pytest.raises(EnvError) as info:
        load_settings(env)
    return info.value


def test_jwt_variables_are_accepted(tmp_path: Path) -> None:
    pem = tmp_path / "pub.pem"
    pem.write_bytes(rsa_keypair()[1])
    s = load_settings({"GATEWAY_JWT_PUBLIC_KEY": str(pem), "GATEWAY_JWT_ALGORITHMS": "RS256, PS256",
                       "GATEWAY_JWT_ISSUER": "https://idp", "GATEWAY_JWT_AUDIENCE": "api",
                       "GATEWAY_JWT_LEEWAY": "10", "GATEWAY_JWT_ORG_CLAIM": "tenant",
                       "GATEWAY_JWT_JWKS_URL": "https://idp.example/jwks", "GATEWAY_AUDIT_LOG": "audit.jsonl"})
    assert s.jwt_algorithms == ("RS256", "PS256") and s.jwt_leeway == 10 and s.audit_log == "audit.jsonl"


@pytest.mark.parametrize("env,var,text", [
    ({"GATEWAY_JWT_SECRET": "short"}, "GATEWAY_JWT_SECRET", "at least 32 bytes"),
    ({"GATEWAY_JWT_PUBLIC_KEY": "/nonexistent/key.pem"}, "GATEWAY_JWT_PUBLIC_KEY", "cannot read"),
    ({"GATEWAY_JWT_JWKS_URL": "ftp://idp/jwks"}, "GATEWAY_JWT_JWKS_URL", ""),
    ({"GATEWAY_JWT_ALGORITHMS": "none"}, "GATEWAY_JWT_ALGORITHMS", "comma-separated"),
    ({"GATEWAY_JWT_ALGORITHMS": "HS256,none", "GATEWAY_JWT_SECRET": "k" * 32}, "GATEWAY_JWT_ALGORITHMS", ""),
    ({"GATEWAY_JWT_ALGORITHMS": "RS256", "GATEWAY_JWT_SECRET": "k" * 32}, "GATEWAY_JWT_ALGORITHMS",
     "cannot be verified"),
    ({"GATEWAY_JWT_LEEWAY": "-1"}, "GATEWAY_JWT_LEEWAY", ""),
])
def test_bad_jwt_settings_name_the_variable(env: dict[str, str], var: str, text: str) -> None:
    exc = refused(env)
    assert exc.var == var
    assert text in exc.message
    assert "k" * 32 not in str(exc)


@pytest.mark.parametrize("content,text", [
    (b"-----BEGIN PUBLIC KEY-----\nnot base64!\n-----END PUBLIC KEY-----\n", "not a PEM public key"),
    (b"hello", "not a PEM public key"),
    (b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n", "a private key"),
])
def test_malformed_pem_exits_naming_the_variable(tmp_path: Path, content: bytes, text: str) -> None:
    pem = tmp_path / "k.pem"
    pem.write_bytes(content)
    exc = refused({"GATEWAY_JWT_PUBLIC_KEY": str(pem)})
    assert exc.var == "GATEWAY_JWT_PUBLIC_KEY" and text in exc.message


def test_small_rsa_key_is_refused(tmp_path: Path) -> None:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    k = rsa.generate_private_key(public_exponent=65537, key_size=1024).public_key()
    pem = tmp_path / "small.pem"
    pem.write_bytes(k.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    exc = refused({"GATEWAY_JWT_PUBLIC_KEY": str(pem)})
    assert "1024 bits" in exc.message


def test_ec_key_allows_only_its_curve(tmp_path: Path) -> None:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    k = ec.generate_private_key(ec.SECP384R1()).public_key()
    pem = tmp_path / "ec.pem"
    pem.write_bytes(k.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    from gateway.security.context import build_checker

    checker, _ = build_checker(load_settings({"GATEWAY_JWT_PUBLIC_KEY": str(pem)}))
    assert checker.algorithms == frozenset({"ES384"})
    assert refused({"GATEWAY_JWT_PUBLIC_KEY": str(pem), "GATEWAY_JWT_ALGORITHMS": "ES256"}).var == \
        "GATEWAY_JWT_ALGORITHMS"
