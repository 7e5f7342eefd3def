"""The network side of the probes: connections, TLS, one HTTP/1.1 exchange, and failure reason codes.

HTTP is :mod:`shared.http11`'s, the notifier's webhooks' client too (one write per request, one wakeup per
answer, h11 judging every answer that is not plainly well-formed) rather than httpx, whose request cost
about five times the CPU. Every probe opens its own connection, and drops it after its exchange (no
keep-alive between probes): a probe must prove that the target still accepts connections (and completes a
TLS handshake), not only that an idle connection still answers, and a reused connection would need a retry
on a fresh one to tell a dead endpoint from a connection the server closed while idle. This module maps
what fails to the probes' reason codes.
"""

from __future__ import annotations

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
from shared.http11 import Http11Connection, NoAnswer, RequestHead, TooLarge, connect, render_head
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


def cert_expiry(connection: Http11Connection) -> datetime | None:
    """The notAfter of the certificate the peer presented (verified connections only)."""
    peer = connection.get_extra_info("peercert")
    not_after = peer.get("notAfter") if isinstance(peer, dict) else None
    if not isinstance(not_after, str):
        return None
    return datetime.fromtimestamp(ssl.cert_time_to_seconds(not_after), UTC)


class Connector:
    """Opens the connections of the probes: cached name resolution, then TCP, then TLS when asked."""

    def __init__(self, *, contexts: TlsContexts | None = None, resolver: Resolver | None = None) -> None:
        self.contexts = contexts or TlsContexts()
        self.resolver = resolver or Resolver()

    async def open(self, endpoint: Endpoint, *, tls: TlsFiles | None) -> Http11Connection:
        """Connect to ``endpoint`` (verified TLS with ``tls`` files when given); raise :class:`ProbeFailure`.

        The caller drops the connection with ``abort()`` when done: everything was read or given up on, and
        a graceful TLS shutdown would wait (up to half a minute) for a close_notify from peers that may
        never send it."""
        context = self.contexts.get(tls) if tls is not None else None
        try:
            return await connect(endpoint.host, endpoint.port, resolver=self.resolver, ssl_context=context)
        except (OSError, ValueError) as exc:  # ConnectFailed carries the last address's error as its cause
            raise failure_from(exc) from exc


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
    """HTTP/1.1 over a fresh connection per request (:mod:`shared.http11`). Timeouts are the caller's.

    The head of each distinct request (the same for every probe of a target, but for an ``as4`` ping's
    Content-Length) is rendered and validated by h11 once and kept.
    """

    def __init__(self, connector: Connector, *, max_heads: int = 200_000) -> None:
        self._connector = connector
        self._heads: dict[tuple[str, Endpoint, tuple[tuple[str, str], ...], tuple[str, str] | None, bool],
                          RequestHead] = {}
        self._max_heads = max_heads

    def head(self, request: HttpRequest) -> RequestHead:
        """The rendered head of ``request`` (cached by everything but its body)."""
        with_length = bool(request.body) or request.method in ("POST", "PUT", "PATCH")
        key = (request.method, request.endpoint, request.headers, request.basic_auth, with_length)
        head = self._heads.get(key)
        if head is None:
            if len(self._heads) >= self._max_heads:  # targets replaced many times over: start again
                self._heads.clear()
            head = self._heads[key] = render_head(
                request.method, request.endpoint.path, tuple(_headers(request)), with_length=with_length
            )
        return head

    async def exchange(self, request: HttpRequest, *, tls: TlsFiles, max_body: int) -> HttpAnswer:
        endpoint = request.endpoint
        try:
            head = self.head(request)
        except h11.ProtocolError as exc:  # a header value h11 refuses to send (as before, a probe_error)
            raise failure_from(exc) from exc
        connection = await self._connector.open(endpoint, tls=tls if endpoint.uses_tls else None)
        try:
            answer_pending = connection.start(head.payload(request.body), max_body=max_body)
            expires_at = cert_expiry(connection) if endpoint.uses_tls else None
            answer = await answer_pending
        except NoAnswer as exc:
            raise ProbeFailure("reset", "connection closed without an answer") from exc
        except TooLarge as exc:
            raise ProbeFailure("too_large", f"answer larger than {max_body} bytes") from exc
        except (OSError, ValueError, h11.ProtocolError) as exc:
            raise failure_from(exc) from exc
        finally:
            connection.abort()
        headers = {name.decode("latin-1").lower(): value.decode("latin-1") for name, value in answer.headers}
        return HttpAnswer(answer.status, headers, answer.body, expires_at)


def _headers(request: HttpRequest) -> list[tuple[str, str]]:
    """The request's headers but Content-Length (added per request: an ``as4`` ping's body varies)."""
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
    return headers
