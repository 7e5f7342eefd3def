"""TLS of the services' own HTTP ports: the server context, and the client context of a service calling another.

Both raise ``ValueError`` with one line naming the setting and the file that does not load (missing, not PEM,
a key that does not match the certificate, a wrong key password), so that a bad certificate is a
configuration error at start (``luccs-fallback: <config>: api: ...``), not a traceback.
"""

from __future__ import annotations

import ssl
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives.serialization import load_pem_private_key

__all__ = ["client_context", "server_context"]


def _no_password() -> bytes:
    # Without this, OpenSSL would prompt on the terminal for the password of an encrypted key.
    return b""


def _why_not_loaded(cert_file: str, key_file: str | None, password: str | None) -> str:
    """Why OpenSSL's "PEM lib" refused a certificate and key, in words (cryptography tells them apart)."""
    try:
        x509.load_pem_x509_certificates(Path(cert_file).read_bytes())
    except ValueError:
        return f"api.tls_cert_file {cert_file}: no PEM certificate in it"
    source, setting = (key_file, "api.tls_key_file") if key_file else (cert_file, "api.tls_cert_file")
    pem = Path(source).read_bytes()
    try:
        load_pem_private_key(pem, password.encode() if password else None)
    except TypeError:
        if password is None:
            return f"{setting} {source}: the key is encrypted: give api.tls_key_password"
        return f"{setting} {source}: api.tls_key_password is given but the key is not encrypted"
    except ValueError as exc:
        # A wrong password usually fails the decryption's padding; about once in 300 keys it passes it, and what
        # comes out is no key ("Could not deserialize key data"): an encrypted key refused is the password's fault.
        encrypted = b"ENCRYPTED PRIVATE KEY" in pem or b"Proc-Type: 4,ENCRYPTED" in pem
        if (password and encrypted) or "password" in str(exc).lower() or "decrypt" in str(exc).lower():
            return f"{setting} {source}: api.tls_key_password does not open the key"
        if key_file is None:
            return f"api.tls_cert_file {cert_file}: no PEM private key in it: give api.tls_key_file"
        return f"api.tls_key_file {key_file}: not a PEM private key"
    except Exception as exc:  # an unsupported key type, say: still a configuration problem
        return f"{setting} {source}: {exc}"
    return f"api.tls_cert_file {cert_file}: cannot be used with its key"


def _load_identity(context: ssl.SSLContext, *, cert_file: str, key_file: str | None, password: str | None) -> None:
    try:
        context.load_cert_chain(cert_file, key_file, password if password is not None else _no_password)
    except ssl.SSLError as exc:
        if exc.reason == "KEY_VALUES_MISMATCH":
            key = f"api.tls_key_file {key_file}" if key_file else "the key in it"
            raise ValueError(f"api.tls_cert_file {cert_file}: {key} does not match the certificate") from exc
        raise ValueError(_why_not_loaded(cert_file, key_file, password)) from exc
    except OSError as exc:
        missing = exc.filename or (key_file if Path(cert_file).is_file() else cert_file)
        raise ValueError(f"api: cannot read {missing}: {exc.strerror or exc}") from exc


def _load_cas(context: ssl.SSLContext, ca_file: str, setting: str) -> None:
    try:
        context.load_verify_locations(cafile=ca_file)
    except ssl.SSLError as exc:
        raise ValueError(f"{setting} {ca_file}: no PEM CA certificate in it ({exc.reason or exc})") from exc
    except OSError as exc:
        raise ValueError(f"{setting}: cannot read {ca_file}: {exc.strerror or exc}") from exc


def server_context(
    *, cert_file: str, key_file: str | None = None, password: str | None = None, client_ca_file: str | None = None
) -> ssl.SSLContext:
    """The TLS context of a service's port: TLS 1.2 or later and our certificate chain. With
    ``client_ca_file`` EVERY connection must present a client certificate chaining to it: checked in the
    handshake, before any HTTP is read, so no route can be forgotten (the ASGI server does not hand the
    peer certificate to the app, so a per-route choice could not be made there)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    _load_identity(context, cert_file=cert_file, key_file=key_file, password=password)
    if client_ca_file is not None:
        _load_cas(context, client_ca_file, "api.tls_client_ca_file")
        context.verify_mode = ssl.CERT_REQUIRED
    return context


def client_context(
    *,
    ca_file: str | None,
    ca_setting: str,
    cert_file: str | None = None,
    key_file: str | None = None,
    password: str | None = None,
) -> ssl.SSLContext:
    """The TLS context of a service calling another one's https port. The server must chain to ``ca_file``
    (only to it; without one, to the system's CAs) and name the host called. ``cert_file`` (this
    configuration's own ``[api]`` certificate) is presented when the server asks for a client certificate."""
    if ca_file is None:
        context = ssl.create_default_context()
    else:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # verifies the chain and the host name
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        _load_cas(context, ca_file, ca_setting)
    if cert_file is not None:
        _load_identity(context, cert_file=cert_file, key_file=key_file, password=password)
    return context
