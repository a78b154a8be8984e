"""TLS on both sides: the listeners' server contexts (with reload on SIGHUP) and the upstream
pools' client contexts.

Server side (GATEWAY_TLS_CERT/GATEWAY_TLS_KEY for the data plane, GATEWAY_ADMIN_TLS_CERT/
GATEWAY_ADMIN_TLS_KEY for the admin listener). TLS 1.2 and 1.3 only, ECDHE with AEAD ciphers for
1.2 (Mozilla's "intermediate" profile), no compression, no client-initiated renegotiation (a
cheap way for one client to make us do handshakes), ALPN `http/1.1` (the only protocol we speak:
a client offering only h2 fails the handshake instead of sending frames we cannot parse).
`ServerTLS.reload()` builds a whole new context from the files: a listener hands the new one to
connections accepted from then on, while established connections keep the one they were made
with, so nothing in flight is dropped. A certificate that does not load (missing file, bad PEM,
key not matching) is refused with its reason and the previous context stays in force.

Client side (https:// targets). One context per (verify, ca_file), shared by every pool that
names it: CERT_REQUIRED and host name checking against the system CA bundle by default, or
against `ca_file` (a service's own CA), or no verification at all with `tls_verify = false`.
SNI and the checked name are the target's host (uvloop's `server_hostname`), never the client's
Host header.
"""
from __future__ import annotations

import logging
import os
import ssl
from dataclasses import dataclass

log = logging.getLogger("gateway.tls")

ALPN = ["http/1.1"]
# Mozilla intermediate (TLS 1.2 part; TLS 1.3 suites are all AEAD and are left at OpenSSL's
# default). ECDHE only: forward secrecy; no CBC, no RSA key exchange.
TLS12_CIPHERS = ("ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:"
                 "ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-RSA-AES256-GCM-SHA384:"
                 "ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305")


class TLSError(ValueError):
    """A certificate, key or CA file that cannot be used; the message says why (one line)."""


def _reason(exc: BaseException) -> str:
    if isinstance(exc, ssl.SSLError):
        # "[SSL] PEM lib (_ssl.c:3917)" says little; the library/reason pair is the useful part.
        parts = [p for p in (exc.library, exc.reason) if p]
        return " ".join(str(p) for p in parts) or str(exc)
    if isinstance(exc, OSError):
        return f"{exc.strerror or exc}: {exc.filename}" if exc.filename else str(exc.strerror or exc)
    return str(exc)


def _readable(path: str, what: str) -> None:
    # load_cert_chain reports a missing file as "[Errno 2] No such file or directory" without the
    # name; checked first so the message names the path.
    if not os.path.isfile(path):
        raise TLSError(f"{what} {path!r} is not a file")
    if not os.access(path, os.R_OK):
        raise TLSError(f"{what} {path!r} is not readable by this user")


def server_context(cert: str, key: str) -> ssl.SSLContext:
    """A listener's context for the PEM certificate chain `cert` and private key `key`."""
    _readable(cert, "certificate")
    _readable(key, "private key")
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.set_ciphers(TLS12_CIPHERS)
    ctx.options |= ssl.OP_NO_COMPRESSION | ssl.OP_CIPHER_SERVER_PREFERENCE
    ctx.options |= getattr(ssl, "OP_NO_RENEGOTIATION", 0)
    ctx.set_alpn_protocols(ALPN)
    try:
        ctx.load_cert_chain(cert, key)
    except (ssl.SSLError, OSError, ValueError) as exc:
        raise TLSError(f"cannot load certificate {cert!r} with key {key!r}: {_diagnose(cert, key, exc)}") from None
    return ctx


def _diagnose(cert: str, key: str, exc: BaseException) -> str:
    # OpenSSL 3 reports most of these as "[SSL] PEM lib": say which file is wrong and how.
    try:
        with open(cert, "rb") as f:
            cert_text = f.read(1 << 20)
        with open(key, "rb") as f:
            key_text = f.read(1 << 20)
    except OSError as err:
        return _reason(err)
    if b"-----BEGIN CERTIFICATE-----" not in cert_text:
        return f"{cert!r} holds no PEM certificate (-----BEGIN CERTIFICATE-----)"
    if b"PRIVATE KEY-----" not in key_text:
        return f"{key!r} holds no PEM private key (-----BEGIN PRIVATE KEY-----)"
    if isinstance(exc, ssl.SSLError) and exc.reason == "KEY_VALUES_MISMATCH":
        return "the private key does not belong to the certificate"
    return _reason(exc) if not isinstance(exc, ssl.SSLError) or exc.reason else f"{exc} (a malformed PEM block?)"


class ServerTLS:
    """A listener's certificate: the context in force and how to replace it.

    `cert_var`/`key_var` name the variables in messages. `context` is read by the listener when it
    accepts (or creates its server); `reload()` swaps it only for a context that loaded."""

    __slots__ = ("cert", "key", "cert_var", "key_var", "context", "reloads")

    def __init__(self, cert: str, key: str, cert_var: str, key_var: str) -> None:
        self.cert = cert
        self.key = key
        self.cert_var = cert_var
        self.key_var = key_var
        self.context = server_context(cert, key)   # TLSError at start: the caller exits 2
        self.reloads = 0

    @classmethod
    def data_plane(cls, settings: object) -> ServerTLS | None:
        cert, key = getattr(settings, "tls_cert", None), getattr(settings, "tls_key", None)
        return cls(cert, key, "GATEWAY_TLS_CERT", "GATEWAY_TLS_KEY") if cert and key else None

    @classmethod
    def admin(cls, settings: object) -> ServerTLS | None:
        cert, key = getattr(settings, "admin_tls_cert", None), getattr(settings, "admin_tls_key", None)
        return cls(cert, key, "GATEWAY_ADMIN_TLS_CERT", "GATEWAY_ADMIN_TLS_KEY") if cert and key else None

    def reload(self) -> bool:
        """Load the files again (a renewed certificate); keep the old context if they do not load.
        The caller logs the success (`reloaded()`) once new connections really get the new one."""
        try:
            ctx = server_context(self.cert, self.key)
        except TLSError as exc:
            log.error("TLS certificate reload refused (%s/%s), keeping the previous certificate: %s",
                      self.cert_var, self.key_var, exc)
            return False
        self.context = ctx
        self.reloads += 1
        return True

    def reloaded(self, listener: str) -> None:
        log.info("TLS certificate reloaded from %s: new %s connections get it", self.cert, listener)


def check_server_pair(cert: str | None, key: str | None, cert_var: str, key_var: str) -> tuple[str, str] | None:
    """For settings validation: None when the pair is usable (or unset), else (variable, reason)."""
    if not cert and not key:
        return None
    if not cert:
        return cert_var, f"needs {cert_var} too (the certificate for the key in {key_var})"
    if not key:
        return key_var, f"needs {key_var} too (the private key of the certificate in {cert_var})"
    try:
        server_context(cert, key)
    except TLSError as exc:
        return cert_var, str(exc)
    return None


# --- client side -----------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class UpstreamTLS:
    """How a pool talks TLS to its upstream: part of the pool's key, so targets naming the same
    address with different trust never share connections."""
    verify: bool = True
    ca_file: str | None = None
    stamp: int = 0      # ca_file's mtime when the config was loaded: a replaced CA file, then a
                        # reload, gives a new key, so new pools with the new trust (old ones drain)

    @classmethod
    def of(cls, verify: bool, ca_file: str | None) -> UpstreamTLS:
        stamp = 0
        if ca_file is not None:
            try:
                stamp = os.stat(ca_file).st_mtime_ns
            except OSError:
                pass    # (refused by client_context with the file's name)
        return cls(verify, ca_file, stamp)


_client_contexts: dict[UpstreamTLS, ssl.SSLContext] = {}
MAX_CLIENT_CONTEXTS = 64    # distinct trust settings alive at once; beyond, the cache starts over


def client_context(tls: UpstreamTLS) -> ssl.SSLContext:
    """The (cached) context for `tls`; TLSError when `ca_file` does not load."""
    ctx = _client_contexts.get(tls)
    if ctx is not None:
        return ctx
    if tls.ca_file is not None:
        _readable(tls.ca_file, "CA file")
    try:
        ctx = ssl.create_default_context(cafile=tls.ca_file)
    except (ssl.SSLError, OSError, ValueError) as exc:
        raise TLSError(f"cannot load CA file {tls.ca_file!r}: {_reason(exc)}") from None
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.set_alpn_protocols(ALPN)
    if not tls.verify:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    if len(_client_contexts) >= MAX_CLIENT_CONTEXTS:
        _client_contexts.clear()    # (pools hold their own reference: nothing in use is lost)
    _client_contexts[tls] = ctx
    return ctx


def describe_failure(exc: BaseException) -> str:
    """One line for the log: why an upstream TLS handshake failed."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"certificate verify failed: {exc.verify_message}"
    return _reason(exc)
