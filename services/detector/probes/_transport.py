"""The network side of the probes: connections, TLS, one HTTP/1.1 exchange, and failure reason codes.

HTTP is spoken by :mod:`shared.http11` (over asyncio streams; the notifier's webhooks use it too)
rather than through httpx: a probe is one request on a fresh connection, and measured on one core this
costs about a fifth of the CPU of an httpx request (0.25 ms against 1.3 ms), which is what lets one
detector probe thousands of targets. Every probe opens its own connection, so a probe also proves that
the target still accepts connections (and completes a TLS handshake), not only that an idle keep-alive
connection still answers. This module maps what fails to the probes' reason codes.
"""

from __future__ import annotations

import asyncio
import base64
import errno
import socket
import ssl
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Protocol

import h11

from services.detector.targets import Endpoint, TlsFiles
from shared.http11 import Http11Connection, NoAnswer, TooLarge, connect, exchange
from shared.resolver import Resolver

USER_AGENT = "luccs-fallback-detector/1"
_X509_V_ERR_CERT_HAS_EXPIRED = 10


class ProbeFailure(Exception):
    """The probed system failed in a way that has a reason code (refused, reset, dns, tls_error, ...)."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


def _chain(exc: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen and len(seen) < 10:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__


def failure_from(exc: BaseException) -> ProbeFailure:
    """The reason code of a network-level exception (walking its causes), for a probe result."""
    for cause in _chain(exc):
        if isinstance(cause, ProbeFailure):
            return cause
        text = str(cause) or type(cause).__name__
        if isinstance(cause, ssl.SSLCertVerificationError):
            code = getattr(cause, "verify_code", None)
            message = getattr(cause, "verify_message", None) or text
            reason = "tls_expired" if code == _X509_V_ERR_CERT_HAS_EXPIRED else "tls_invalid"
            return ProbeFailure(reason, f"certificate rejected: {message}")
        if isinstance(cause, ssl.SSLError):
            return ProbeFailure("tls_error", f"TLS failed: {getattr(cause, 'reason', None) or text}")
        if isinstance(cause, socket.gaierror):
            return ProbeFailure("dns", f"name resolution failed: {text}")
        if isinstance(cause, ConnectionRefusedError):
            return ProbeFailure("refused", "connection refused")
        if isinstance(cause, ConnectionResetError | BrokenPipeError | ConnectionAbortedError):
            return ProbeFailure("reset", f"connection reset: {text}")
        if isinstance(cause, TimeoutError):
            return ProbeFailure("timeout", "no answer in time")
        if isinstance(cause, OSError) and cause.errno in (errno.EHOSTUNREACH, errno.ENETUNREACH):
            return ProbeFailure("unreachable", text)
        if isinstance(cause, h11.RemoteProtocolError):
            return ProbeFailure("protocol_error", f"invalid HTTP answer: {text}")
    if isinstance(exc, OSError):
        return ProbeFailure("network_error", str(exc) or type(exc).__name__)
    return ProbeFailure("probe_error", f"{type(exc).__name__}: {exc}")


class TlsContexts:
    """One SSL context per trust/client-certificate combination, built once (loading CAs is costly)."""

    def __init__(self) -> None:
        self._contexts: dict[TlsFiles, ssl.SSLContext] = {}

    def get(self, files: TlsFiles) -> ssl.SSLContext:
        """The context for ``files``; raises OSError or ssl.SSLError if a file cannot be loaded."""
        context = self._contexts.get(files)
        if context is None:
            context = ssl.create_default_context(cafile=files.ca_file)
            if files.cert_file:
                context.load_cert_chain(files.cert_file, files.key_file)
            self._contexts[files] = context
        return context


def cert_expiry(writer: asyncio.StreamWriter) -> datetime | None:
    """The notAfter of the certificate the peer presented (verified connections only)."""
    peer = writer.get_extra_info("peercert")
    not_after = peer.get("notAfter") if isinstance(peer, dict) else None
    if not isinstance(not_after, str):
        return None
    return datetime.fromtimestamp(ssl.cert_time_to_seconds(not_after), UTC)


class Connector:
    """Opens the connections of the probes: cached name resolution, then TCP, then TLS when asked."""

    def __init__(self, *, contexts: TlsContexts | None = None, resolver: Resolver | None = None) -> None:
        self.contexts = contexts or TlsContexts()
        self.resolver = resolver or Resolver()

    async def open(
        self, endpoint: Endpoint, *, tls: TlsFiles | None
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        """Connect to ``endpoint`` (verified TLS with ``tls`` files when given); raise :class:`ProbeFailure`."""
        context = self.contexts.get(tls) if tls is not None else None
        try:
            connection = await connect(endpoint.host, endpoint.port, resolver=self.resolver, ssl_context=context)
        except (OSError, ValueError) as exc:  # ConnectFailed carries the last address's error as its cause
            raise failure_from(exc) from exc
        return connection.reader, connection.writer


def close(writer: asyncio.StreamWriter) -> None:
    """Drop a probe's connection at once. Everything was read or given up on; a graceful TLS shutdown
    would wait (up to half a minute) for a close_notify from peers that may never send it."""
    writer.transport.abort()


@dataclass(frozen=True)
class HttpRequest:
    method: str
    endpoint: Endpoint
    headers: tuple[tuple[str, str], ...] = ()
    body: bytes = b""
    basic_auth: tuple[str, str] | None = None


@dataclass(frozen=True)
class HttpAnswer:
    status: int
    headers: dict[str, str] = field(default_factory=dict)  # lower-case names, last value wins
    body: bytes = b""
    cert_expires_at: datetime | None = None

    @property
    def content_type(self) -> str:
        return self.headers.get("content-type", "")


class HttpClient(Protocol):
    """Sends one HTTP request and returns the whole answer; raises :class:`ProbeFailure` on failure."""

    async def exchange(self, request: HttpRequest, *, tls: TlsFiles, max_body: int) -> HttpAnswer: ...


class H11Client:
    """HTTP/1.1 over a fresh asyncio connection per request (:mod:`shared.http11`). Timeouts are the caller's."""

    def __init__(self, connector: Connector) -> None:
        self._connector = connector

    async def exchange(self, request: HttpRequest, *, tls: TlsFiles, max_body: int) -> HttpAnswer:
        endpoint = request.endpoint
        reader, writer = await self._connector.open(endpoint, tls=tls if endpoint.uses_tls else None)
        expires_at = cert_expiry(writer) if endpoint.uses_tls else None
        try:
            answer = await exchange(Http11Connection(reader, writer), method=request.method, target=endpoint.path,
                                    headers=_headers(request), body=request.body, max_body=max_body)
        except NoAnswer as exc:
            raise ProbeFailure("reset", "connection closed without an answer") from exc
        except TooLarge as exc:
            raise ProbeFailure("too_large", f"answer larger than {max_body} bytes") from exc
        except (OSError, ValueError, h11.ProtocolError) as exc:
            raise failure_from(exc) from exc
        finally:
            close(writer)
        headers = {name.decode("latin-1").lower(): value.decode("latin-1") for name, value in answer.headers}
        return HttpAnswer(answer.status, headers, answer.body, expires_at)


def _headers(request: HttpRequest) -> list[tuple[str, str]]:
    headers = [
        ("Host", request.endpoint.authority),
        ("User-Agent", USER_AGENT),
        ("Accept-Encoding", "identity"),
        ("Connection", "close"),
        *request.headers,
    ]
    if request.basic_auth is not None:
        user, password = request.basic_auth
        headers.append(("Authorization", "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()))
    if request.body or request.method in ("POST", "PUT", "PATCH"):
        headers.append(("Content-Length", str(len(request.body))))
    return headers
