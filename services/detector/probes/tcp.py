"""The ``tcp`` probe (a connection is accepted) and the ``tls`` probe (a handshake completes)."""

from __future__ import annotations

import ssl

from services.detector.probes._transport import Connector, cert_expiry
from services.detector.probes.verdict import Verdict
from services.detector.targets import Target


async def probe_tcp(target: Target, connector: Connector) -> Verdict:
    """Up when a TCP connection to host:port is accepted."""
    connection = await connector.open(target.endpoint, tls=None)
    connection.abort()
    return Verdict(True, "ok", f"connected to {target.endpoint.host_key}")


async def probe_tls(target: Target, connector: Connector) -> Verdict:
    """Up when a verified TLS handshake completes; the certificate's expiry is reported.

    With TLS 1.3 a server that rejects the client certificate only says so after the client considers
    the handshake done; use an http or as4 probe to check that a mutual-TLS endpoint accepts the client.
    """
    connection = await connector.open(target.endpoint, tls=target.tls)
    expires_at = cert_expiry(connection)
    ssl_object = connection.get_extra_info("ssl_object")
    version = ssl_object.version() if isinstance(ssl_object, ssl.SSLObject) else "TLS"
    connection.abort()
    until = f", certificate valid until {expires_at.isoformat()}" if expires_at else ""
    return Verdict(True, "ok", f"{version} handshake{until}", cert_expires_at=expires_at)
