"""Webhook POSTs over pooled keep-alive connections, spoken by :mod:`shared.http11` (the probes' client too).

The connection step is where the safety rules sit: the host name is resolved right before connecting (by
:class:`shared.resolver.Resolver`, cached: a host is looked up once a minute, however many EOs' webhooks it
serves), every address it resolves to is checked, and the connection goes to a checked address (so a name
that later re-resolves elsewhere gains nothing). TLS verifies the certificate against the URL's host name.
Redirects are never followed: the caller sees the 3xx and its Location. Nobody reads a webhook answer's
body: it is not kept, and past 64 KiB the connection is dropped. Answers are judged as the probes' are
(:mod:`shared.http11`: a fast path for plain answers, h11 for every other one).

A request goes out as one write of bytes: the head's fixed part (Host, User-Agent) is rendered once per origin
and the request line per request (each EO has a URL of its own: :meth:`WebhookHttpClient._parse`), the
per-request headers (length, Idempotency-Key, signature) spliced after it.
"""

from __future__ import annotations

import asyncio
import re
import socket
import ssl
import time
from collections.abc import Sequence
from dataclasses import dataclass
from urllib.parse import urlsplit

import h11

from services.notifier.domain import address_problem, url_origin
from shared.http11 import Http11Connection, TooLarge, connect, header_lines, request_head, send
from shared.resolver import Resolver

__all__ = ["HttpAnswer", "TargetRefused", "TransportError", "WebhookHttpClient"]

_MAX_RESPONSE_BYTES = 64 * 1024
_NOT_PLAIN = re.compile("[^\x21-\x7e]")


class TargetRefused(Exception):
    """The host resolves to an address that webhooks may not reach (loopback, private, ...)."""


class TransportError(Exception):
    """The request could not be carried out: refused connection, TLS failure, broken or garbled answer."""


@dataclass(frozen=True)
class HttpAnswer:
    status: int
    location: str | None = None


class WebhookHttpClient:
    """POSTs bodies to webhook URLs over pooled keep-alive connections; one instance per process."""

    def __init__(
        self,
        *,
        allow_private: bool,
        ssl_context: ssl.SSLContext | None = None,
        max_idle_per_origin: int = 20,
        idle_expiry_s: float = 30.0,
        resolver: Resolver | None = None,
        user_agent: str = "luccs-fallback-notifier/1",
    ) -> None:
        self._allow_private = allow_private
        self._ssl = ssl_context or ssl.create_default_context()
        self._max_idle = max_idle_per_origin
        self._idle_expiry_s = idle_expiry_s
        self._resolver = resolver or Resolver()
        self._user_agent = user_agent
        self._idle: dict[tuple[str, str, int], list[Http11Connection]] = {}
        self._urls: dict[str, tuple[str, str, int, bytes]] = {}

    async def post(
        self, url: str, *, body: bytes, headers: Sequence[tuple[str, str]], timeout_s: float
    ) -> HttpAnswer:
        """POST ``body`` and return the answer's status; the whole exchange must finish within ``timeout_s``.

        Raises :class:`TargetRefused`, :class:`TransportError` or :class:`TimeoutError`.
        """
        scheme, host, port, head = self._parse(url)
        origin = (scheme, host.lower(), port)
        try:
            request = b"".join((head, header_lines([("Content-Length", str(len(body))), *headers]), b"\r\n", body))
        except ValueError as exc:
            raise TransportError(f"cannot send this request: {exc}") from None
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while True:
            connection = self._take_idle(origin)
            reused = connection is not None
            if connection is None:
                async with asyncio.timeout_at(deadline):
                    connection = await self._connect(scheme, host, port)
            # The exchange's deadline is a timer that fails its answer and drops the connection: cheaper per
            # request (thousands a second in a webhook worker) than a timeout scope, which adds the task's
            # cancellation and uncancellation to its timer.
            timer = loop.call_at(deadline, connection.time_out)
            try:
                answer = await send(connection, request, max_body=_MAX_RESPONSE_BYTES, keep_body=False)
            except TimeoutError:  # an OSError too: never a transport error, never tried again
                connection.close()
                raise
            except TooLarge as exc:
                connection.close()
                return HttpAnswer(exc.status)
            except (OSError, EOFError, h11.ProtocolError) as exc:
                connection.close()
                if reused and not connection.received:
                    continue  # the server had closed the idle connection: once more on a fresh one
                raise TransportError(_describe(exc)) from exc
            except BaseException:
                connection.close()
                raise
            finally:
                timer.cancel()
            if answer.keep_alive and connection.usable:  # not timed out between the answer and this turn
                self._give_back(origin, connection)
            else:
                connection.close()
            return HttpAnswer(answer.status, answer.header(b"location"))

    def _parse(self, url: str) -> tuple[str, str, int, bytes]:
        """Scheme, host, port and the request's fixed head (request line, Host, User-Agent) of ``url``.

        Every EO has a URL of its own, most under a few origins: a plain URL (printable ASCII, no space) is cut
        at its origin, which is parsed once (:meth:`_parse_whole` of the origin), and only its request line is
        made per request, the target as ``urlsplit`` would give it. Any other URL is parsed whole, and kept."""
        origin = url_origin(url)
        if origin is None or _NOT_PLAIN.search(url):
            return self._parse_whole(url)
        try:
            scheme, host, port, head = self._parse_whole(origin)
        except TransportError:
            return self._parse_whole(url)  # refused as the whole URL is, its message quoting it
        path, _, query = url[len(origin):].partition("#")[0].partition("?")
        target = (path or "/") + (f"?{query}" if query else "")
        fixed = head[head.index(b"\n") + 1:]  # the origin's Host and User-Agent lines
        return scheme, host, port, b"POST %s HTTP/1.1\r\n%s" % (target.encode("ascii"), fixed)

    def _parse_whole(self, url: str) -> tuple[str, str, int, bytes]:
        """:meth:`_parse` by ``urlsplit``, kept per URL (per origin for the plain URLs)."""
        parsed = self._urls.get(url)
        if parsed is None:
            parts = urlsplit(url)
            if parts.scheme not in ("http", "https") or not parts.hostname:
                raise TransportError(f"not an http(s) URL: {url!r}")
            target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
            try:
                head = request_head("POST", target, [("Host", parts.netloc.rpartition("@")[2]),
                                                     ("User-Agent", self._user_agent)])
            except ValueError as exc:
                raise TransportError(f"not a usable URL: {exc}") from None
            parsed = (parts.scheme, parts.hostname, parts.port or (443 if parts.scheme == "https" else 80), head)
            if len(self._urls) > 100_000:
                self._urls.clear()
            self._urls[url] = parsed
        return parsed

    async def aclose(self) -> None:
        for connections in self._idle.values():
            for connection in connections:
                connection.close()
        self._idle.clear()

    def _take_idle(self, origin: tuple[str, str, int]) -> Http11Connection | None:
        idle = self._idle.get(origin)
        now = time.monotonic()
        while idle:
            connection = idle.pop()
            if now - connection.idle_since < self._idle_expiry_s and connection.usable:
                return connection
            connection.close()
        return None

    def _give_back(self, origin: tuple[str, str, int], connection: Http11Connection) -> None:
        idle = self._idle.setdefault(origin, [])
        if len(idle) >= self._max_idle:
            connection.close()
            return
        connection.idle_since = time.monotonic()
        idle.append(connection)

    async def _connect(self, scheme: str, host: str, port: int) -> Http11Connection:
        def check(address: str) -> None:
            problem = address_problem(address, allow_private=self._allow_private, host=host)
            if problem is not None:
                raise TargetRefused(problem)

        try:
            return await connect(host, port, resolver=self._resolver,
                                 ssl_context=self._ssl if scheme == "https" else None, check=check)
        except socket.gaierror as exc:
            raise TransportError(f"cannot resolve {host}: {exc}") from exc
        except ssl.SSLError as exc:
            raise TransportError(f"TLS handshake with {host}:{port} failed: {exc}") from exc
        except OSError as exc:  # shared.http11.ConnectFailed: every address refused or unreachable
            raise TransportError(str(exc)) from exc


def _describe(exc: BaseException) -> str:
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    if isinstance(exc, ssl.SSLError):
        return f"TLS error: {exc}"
    return f"{type(exc).__name__}: {exc}"
