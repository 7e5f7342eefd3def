"""One HTTP/1.1 client for the services' own outbound requests: the detector's probes and the notifier's webhooks.

h11 (the sans-I/O HTTP/1.1 library httpx itself runs on) speaks the protocol over asyncio streams. Why not
httpx: measured on the project's 2-core machine, an httpx request costs about five times the CPU (a probe
0.25 ms against 1.3 ms; an httpx ``AsyncClient`` POSTing webhooks to a loopback receiver peaked near 1,200
requests/s and slowed down as concurrency grew, its pool rescanning every connection for every request).

This module owns what both callers share: resolving the host (through :class:`shared.resolver.Resolver`,
cached), checking every resolved address before connecting when the caller has a rule for them (the
notifier's rule against private targets), connecting to one of them (TLS verified against the host name
when a context is given), and one request/answer exchange on a :class:`Http11Connection`. What differs
stays with the callers: the probes open a fresh connection per probe and read the answer's body up to a
bound; the webhooks keep connections alive per origin and ignore the body. Timeouts are the caller's
(``asyncio.timeout`` around the call); failures come out as the exceptions of the step that failed.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import h11

from shared.resolver import Resolver

__all__ = ["Answer", "ConnectFailed", "Http11Connection", "NoAnswer", "TooLarge", "connect", "exchange"]

READ_CHUNK = 65_536


class ConnectFailed(OSError):
    """No address of the host accepted the connection; the last address's error is the ``__cause__``."""


class NoAnswer(EOFError):
    """The server closed the connection before its answer began."""


class TooLarge(Exception):
    """The answer's body is longer than the caller accepts; ``status`` is the answer's status code."""

    def __init__(self, status: int, limit: int) -> None:
        super().__init__(f"answer larger than {limit} bytes")
        self.status = status
        self.limit = limit


@dataclass(frozen=True)
class Answer:
    status: int
    headers: list[tuple[bytes, bytes]]  # names in lower case, as h11 gives them
    body: bytes
    keep_alive: bool
    """Both sides finished the exchange cleanly: the connection may carry the next request."""

    def header(self, name: bytes) -> str | None:
        """The last value of header ``name`` (lower case), or None."""
        found = [value for key, value in self.headers if key == name]
        return found[-1].decode("latin-1") if found else None


@dataclass
class Http11Connection:
    """An open connection and its HTTP/1.1 state; :func:`exchange` runs one request on it at a time."""

    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    protocol: h11.Connection = field(
        default_factory=lambda: h11.Connection(h11.CLIENT, max_incomplete_event_size=READ_CHUNK)
    )
    received: bool = False
    """Whether the current exchange has received any byte (a reused connection that failed before
    receiving anything was closed by the server while idle: the request may go again on a fresh one)."""
    idle_since: float = 0.0

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.writer.close()

    def abort(self) -> None:
        """Drop the connection at once (no graceful TLS shutdown waiting for a peer's close_notify)."""
        self.writer.transport.abort()


async def connect(
    host: str,
    port: int,
    *,
    resolver: Resolver,
    ssl_context: ssl.SSLContext | None = None,
    check: Callable[[str], None] | None = None,
    limit: int = 2 * READ_CHUNK,
) -> Http11Connection:
    """Resolve ``host``, let ``check`` refuse any of its addresses (by raising), and connect to the first
    address that accepts, over TLS verified for ``host`` when ``ssl_context`` is given.

    Raises ``socket.gaierror`` (name resolution), what ``check`` raises, ``ssl.SSLError`` (the address
    answered, its TLS failed: no other address is tried) or :class:`ConnectFailed`.
    """
    addresses = await resolver.resolve(host, port)
    if check is not None:
        for _family, address in addresses:
            check(address)
    failures: list[str] = []
    last: OSError | None = None
    for family, address in addresses:
        try:
            reader, writer = await asyncio.open_connection(
                address, port, family=family, ssl=ssl_context,
                server_hostname=host if ssl_context is not None else None, limit=limit,
            )
        except ssl.SSLError:
            raise
        except OSError as exc:
            failures.append(f"{address}:{port}: {exc.strerror or exc}")
            last = exc
            continue
        return Http11Connection(reader, writer)
    raise ConnectFailed(f"cannot connect to {host}: " + "; ".join(failures)) from last


async def exchange(
    connection: Http11Connection,
    *,
    method: str,
    target: str,
    headers: Sequence[tuple[str, str]],
    body: bytes = b"",
    max_body: int,
    keep_body: bool = True,
) -> Answer:
    """Send one request and read its answer (the body too, kept unless ``keep_body`` is false).

    Raises :class:`NoAnswer`, :class:`TooLarge` (more than ``max_body`` bytes of body), ``h11.ProtocolError``
    (a garbled answer) or ``OSError`` (the connection broke).
    """
    protocol = connection.protocol
    connection.received = False
    data = protocol.send(h11.Request(method=method, target=target, headers=list(headers))) or b""
    if body:
        data += protocol.send(h11.Data(data=body)) or b""
    data += protocol.send(h11.EndOfMessage()) or b""
    connection.writer.write(data)
    await connection.writer.drain()
    response: h11.Response | None = None
    content = bytearray()
    size = 0
    eof = False
    while True:
        try:
            event = protocol.next_event()
        except h11.RemoteProtocolError as exc:
            if response is None and eof:
                raise NoAnswer("the server closed the connection without answering") from exc
            raise
        if event is h11.NEED_DATA:
            chunk = await connection.reader.read(READ_CHUNK)
            eof = not chunk
            if eof and response is None:
                raise NoAnswer("the server closed the connection without answering")
            connection.received = True
            protocol.receive_data(chunk)
        elif isinstance(event, h11.Response):
            response = event
        elif isinstance(event, h11.Data):
            size += len(event.data)
            if size > max_body:
                assert response is not None
                raise TooLarge(response.status_code, max_body)
            if keep_body:
                content += event.data
        elif isinstance(event, h11.EndOfMessage):
            assert response is not None
            keep = protocol.our_state is h11.DONE and protocol.their_state is h11.DONE
            if keep:
                protocol.start_next_cycle()
            return Answer(response.status_code, list(response.headers), bytes(content), keep)
        elif isinstance(event, h11.ConnectionClosed) or event is h11.PAUSED:
            break
        # An InformationalResponse (100 Continue) is not the answer: read on.
    if response is None:
        raise NoAnswer("the server closed the connection without answering")
    return Answer(response.status_code, list(response.headers), bytes(content), False)
