"""A small HTTP/1.1 client for webhook POSTs: h11 for the protocol, asyncio streams for the connections.

Why not httpx, which the rest of the code base uses: measured on the project's 2-core machine, an httpx
``AsyncClient`` POSTing to a loopback receiver peaks near 1,200 requests/s and slows down as concurrency
grows (its pool rescans every connection for every request), far from the 2,000/s a 10,000-EO fan-out in
under 5 s needs; h11 over plain streams does ~10,000/s on the same machine (see bench/README.md).

Owning the connection step also gives the safety rules their natural place: the host name is resolved
right before connecting (by :class:`shared.resolver.Resolver`, the detector's cached resolver: a host is
looked up once a minute, however many EOs' webhooks it serves), every address it resolves to is checked,
and the connection goes to a checked address (so a name that later re-resolves elsewhere gains nothing).
TLS verifies the certificate against the URL's host name. Redirects are never followed: the caller sees the
3xx and its Location.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import h11

from services.notifier.domain import address_problem
from shared.resolver import Resolver

__all__ = ["HttpAnswer", "TargetRefused", "TransportError", "WebhookHttpClient"]

_MAX_RESPONSE_BYTES = 64 * 1024


class TargetRefused(Exception):
    """The host resolves to an address that webhooks may not reach (loopback, private, ...)."""


class TransportError(Exception):
    """The request could not be carried out: refused connection, TLS failure, broken or garbled answer."""


@dataclass(frozen=True)
class HttpAnswer:
    status: int
    location: str | None = None


@dataclass
class _Connection:
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    protocol: h11.Connection = field(default_factory=lambda: h11.Connection(h11.CLIENT))
    idle_since: float = 0.0
    answered: bool = False

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.writer.close()


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
        self._idle: dict[tuple[str, str, int], list[_Connection]] = {}
        self._urls: dict[str, tuple[str, str, int, str, str]] = {}

    async def post(
        self, url: str, *, body: bytes, headers: Sequence[tuple[str, str]], timeout_s: float
    ) -> HttpAnswer:
        """POST ``body`` and return the answer's status; the whole exchange must finish within ``timeout_s``.

        Raises :class:`TargetRefused`, :class:`TransportError` or :class:`TimeoutError`.
        """
        scheme, host, port, target, host_header = self._parse(url)
        origin = (scheme, host.lower(), port)
        request_headers = [
            ("Host", host_header), ("User-Agent", self._user_agent), ("Content-Length", str(len(body))),
            *headers,
        ]
        async with asyncio.timeout(timeout_s):
            while True:
                connection = self._take_idle(origin)
                reused = connection is not None
                if connection is None:
                    connection = await self._connect(scheme, host, port)
                try:
                    answer, keep = await _exchange(connection, target, request_headers, body)
                except (OSError, EOFError, h11.ProtocolError) as exc:
                    connection.close()
                    if reused and not connection.answered:
                        continue  # the server had closed the idle connection: once more on a fresh one
                    raise TransportError(_describe(exc)) from exc
                except BaseException:
                    connection.close()
                    raise
                if keep:
                    self._give_back(origin, connection)
                else:
                    connection.close()
                return answer

    def _parse(self, url: str) -> tuple[str, str, int, str, str]:
        parsed = self._urls.get(url)
        if parsed is None:
            parts = urlsplit(url)
            if parts.scheme not in ("http", "https") or not parts.hostname:
                raise TransportError(f"not an http(s) URL: {url!r}")
            parsed = (
                parts.scheme, parts.hostname, parts.port or (443 if parts.scheme == "https" else 80),
                (parts.path or "/") + (f"?{parts.query}" if parts.query else ""), parts.netloc.rpartition("@")[2],
            )
            if len(self._urls) > 100_000:
                self._urls.clear()
            self._urls[url] = parsed
        return parsed

    async def aclose(self) -> None:
        for connections in self._idle.values():
            for connection in connections:
                connection.close()
        self._idle.clear()

    def _take_idle(self, origin: tuple[str, str, int]) -> _Connection | None:
        idle = self._idle.get(origin)
        now = time.monotonic()
        while idle:
            connection = idle.pop()
            if now - connection.idle_since < self._idle_expiry_s and not connection.reader.at_eof():
                return connection
            connection.close()
        return None

    def _give_back(self, origin: tuple[str, str, int], connection: _Connection) -> None:
        idle = self._idle.setdefault(origin, [])
        if len(idle) >= self._max_idle:
            connection.close()
            return
        connection.idle_since = time.monotonic()
        connection.answered = False
        idle.append(connection)

    async def _connect(self, scheme: str, host: str, port: int) -> _Connection:
        try:
            addresses = [address for _family, address in await self._resolver.resolve(host, port)]
        except OSError as exc:
            raise TransportError(f"cannot resolve {host}: {exc}") from exc
        if not addresses:
            raise TransportError(f"{host} resolves to no address")
        for address in addresses:
            problem = address_problem(address, allow_private=self._allow_private, host=host)
            if problem is not None:
                raise TargetRefused(problem)
        failures: list[str] = []
        for address in addresses:
            try:
                reader, writer = await asyncio.open_connection(
                    address, port, ssl=self._ssl if scheme == "https" else None,
                    server_hostname=host if scheme == "https" else None, limit=_MAX_RESPONSE_BYTES * 2,
                )
            except ssl.SSLError as exc:
                raise TransportError(f"TLS handshake with {host} ({address}:{port}) failed: {exc}") from exc
            except OSError as exc:
                failures.append(f"{address}:{port}: {exc.strerror or exc}")
                continue
            return _Connection(reader, writer)
        raise TransportError(f"cannot connect to {host}: " + "; ".join(failures))


async def _exchange(
    connection: _Connection, target: str, headers: list[tuple[str, str]], body: bytes
) -> tuple[HttpAnswer, bool]:
    protocol = connection.protocol
    data = protocol.send(h11.Request(method="POST", target=target, headers=headers)) or b""
    data += (protocol.send(h11.Data(data=body)) or b"") + (protocol.send(h11.EndOfMessage()) or b"")
    connection.writer.write(data)
    await connection.writer.drain()
    answer: HttpAnswer | None = None
    received = 0
    while True:
        event = protocol.next_event()
        if event is h11.NEED_DATA:
            chunk = await connection.reader.read(65536)
            if not chunk and answer is None:
                raise EOFError("the server closed the connection without answering")
            connection.answered = connection.answered or bool(chunk)
            protocol.receive_data(chunk)
        elif isinstance(event, h11.Response):
            connection.answered = True
            location = next((v.decode("latin-1") for k, v in event.headers if k == b"location"), None)
            answer = HttpAnswer(event.status_code, location)
        elif isinstance(event, h11.Data):
            received += len(event.data)
            if received > _MAX_RESPONSE_BYTES and answer is not None:
                return answer, False  # nobody reads a webhook answer's body: do not download a large one
        elif isinstance(event, h11.EndOfMessage):
            assert answer is not None
            keep = protocol.our_state is h11.DONE and protocol.their_state is h11.DONE
            if keep:
                protocol.start_next_cycle()
            return answer, keep
        elif isinstance(event, h11.ConnectionClosed):
            raise EOFError("the server closed the connection before the end of its answer")
        # h11.InformationalResponse (1xx): keep reading


def _describe(exc: BaseException) -> str:
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    if isinstance(exc, ssl.SSLError):
        return f"TLS error: {exc}"
    return f"{type(exc).__name__}: {exc}"
