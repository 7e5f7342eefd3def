"""One HTTP/1.1 client for the services' own outbound requests: the detector's probes and the notifier's webhooks.

Why not httpx: measured on the project's 2-core machine, an httpx request costs about five times the CPU (a
probe 0.25 ms against 1.3 ms; an httpx ``AsyncClient`` POSTing webhooks to a loopback receiver peaked near
1,200 requests/s and slowed down as concurrency grew, its pool rescanning every connection for every request).
Why not h11 any more (it spoke the protocol here before): its per-event validation and state machine took
more of the notifier's event loop than anything else at 100,000 webhooks. A client that sends one request at
a time and never pipelines needs little of it: the request goes out as one ``write`` of bytes (its head
checked for line breaks), and the answer is read with ``readuntil``/``readexactly`` (status line, headers,
then the body framed by Content-Length, chunked coding or the connection's end, as RFC 9112 says).

This module owns what both callers share: resolving the host (through :class:`shared.resolver.Resolver`,
cached), checking every resolved address before connecting when the caller has a rule for them (the
notifier's rule against private targets), connecting to one of them (TLS verified against the host name
when a context is given), and one request/answer exchange on a :class:`Http11Connection`. What differs
stays with the callers: the webhooks keep connections alive per origin, exchange through this module and
ignore the body; the probes (the tcp and tls ones connect through :func:`connect`) exchange HTTP through a
protocol of their own, ``services/detector/probes/_exchange.py`` (one write and one wakeup per probe, h11
judging every answer that is not plainly well-formed, since a probe's verdict rests on it). Timeouts are the
caller's (``asyncio.timeout`` around the call); failures come out as the exceptions of the step that failed.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import ssl
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import TypeVar

import h11

from shared.resolver import Resolver

__all__ = [
    "Answer", "BadAnswer", "ConnectFailed", "Http11Connection", "NoAnswer", "TooLarge", "connect", "exchange",
    "first_connected", "header_lines", "request_bytes", "request_head", "send",
]

ConnectedT = TypeVar("ConnectedT")

READ_CHUNK = 65_536
_VERSIONS = (b"HTTP/1.1", b"HTTP/1.0")
_UNSAFE = re.compile("[\r\n\0]")


class ConnectFailed(OSError):
    """No address of the host accepted the connection; the last address's error is the ``__cause__``."""


class NoAnswer(EOFError):
    """The server closed the connection before its answer began."""


class BadAnswer(h11.RemoteProtocolError):
    """The answer is not HTTP/1.x as RFC 9112 frames it (a garbled status line, header or chunk).

    An ``h11.RemoteProtocolError``, as the answers h11 refused were: the callers' handling (the probes'
    ``protocol_error`` reason) stays what it was."""


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

    async def open_one(family: int, address: str) -> Http11Connection:
        reader, writer = await asyncio.open_connection(
            address, port, family=family, ssl=ssl_context,
            server_hostname=host if ssl_context is not None else None, limit=limit,
        )
        return Http11Connection(reader, writer)

    return await first_connected(host, port, addresses, open_one)


async def first_connected(
    host: str, port: int, addresses: Sequence[tuple[int, str]],
    open_one: Callable[[int, str], Awaitable[ConnectedT]],
) -> ConnectedT:
    """``open_one(family, address)`` for each address in turn until one connects. An ``ssl.SSLError`` stops
    there (the address answered, its TLS failed); when none connects, :class:`ConnectFailed` names each failure."""
    failures: list[str] = []
    last: OSError | None = None
    for family, address in addresses:
        try:
            return await open_one(family, address)
        except ssl.SSLError:
            raise
        except OSError as exc:
            failures.append(f"{address}:{port}: {exc.strerror or exc}")
            last = exc
    raise ConnectFailed(f"cannot connect to {host}: " + "; ".join(failures)) from last


def request_bytes(method: str, target: str, headers: Sequence[tuple[str, str]], body: bytes = b"") -> bytes:
    """The request as it goes on the wire: request line, ``headers`` (Host among them; Content-Length added
    when there is a body and none is given), an empty line, ``body``.

    Raises ``ValueError`` when a name or value would break the head (a line break or NUL in it).
    """
    if body and not any(name.lower() == "content-length" for name, _ in headers):
        headers = [*headers, ("Content-Length", str(len(body)))]
    return request_head(method, target, headers) + b"\r\n" + body


def request_head(method: str, target: str, headers: Sequence[tuple[str, str]]) -> bytes:
    """The request line and ``headers``, without the empty line that ends the head: a caller sending many
    requests to one URL renders this once and appends each request's own :func:`header_lines`."""
    line = f"{method} {target} HTTP/1.1"
    if _UNSAFE.search(line):
        raise ValueError("the request line holds a line break or NUL")
    return line.encode("latin-1") + b"\r\n" + header_lines(headers)


def header_lines(headers: Sequence[tuple[str, str]]) -> bytes:
    """``Name: value`` lines, each ending with CRLF; ``ValueError`` when one holds a line break or NUL."""
    text = "".join(f"{name}: {value}\r\n" for name, value in headers)
    if _UNSAFE.search(text.replace("\r\n", "")) or text.count("\r\n") != len(headers):
        raise ValueError("a header holds a line break or NUL")
    return text.encode("latin-1")


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

    Raises :class:`NoAnswer`, :class:`TooLarge` (more than ``max_body`` bytes of body), :class:`BadAnswer`
    (a garbled answer) or ``OSError`` (the connection broke; ``asyncio.IncompleteReadError``, an
    ``EOFError``, when it broke within the answer).
    """
    return await send(connection, request_bytes(method, target, headers, body), max_body=max_body,
                      keep_body=keep_body)


async def send(connection: Http11Connection, request: bytes, *, max_body: int, keep_body: bool = True) -> Answer:
    """:func:`exchange` for a request already in bytes (:func:`request_bytes`, or a caller's own rendering of
    a head it sends many times): one ``write``, then the answer."""
    connection.received = False
    connection.writer.write(request)
    await connection.writer.drain()
    reader = connection.reader
    while True:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except asyncio.IncompleteReadError as exc:
            if not exc.partial:
                raise NoAnswer("the server closed the connection without answering") from exc
            connection.received = True
            raise BadAnswer("the answer ended within its head") from exc
        except asyncio.LimitOverrunError as exc:
            connection.received = True
            raise BadAnswer("the answer's head is too long") from exc
        connection.received = True
        version, status, fields = _parse_head(head)
        if status >= 200:
            break
        # An informational answer (100 Continue) is not the answer: read on.
    keep_alive = version == b"HTTP/1.1" and not _has_token(fields.get(b"connection"), b"close")
    try:
        content, to_the_end = await _read_body(reader, fields, status=status, max_body=max_body, keep_body=keep_body)
    except asyncio.LimitOverrunError as exc:
        raise BadAnswer("a chunk size line is too long") from exc
    return Answer(status, list(fields.items()), bytes(content), keep_alive and not to_the_end)


async def _read_body(
    reader: asyncio.StreamReader, fields: dict[bytes, bytes], *, status: int, max_body: int, keep_body: bool
) -> tuple[bytearray, bool]:
    """The body (empty unless ``keep_body``), and whether it ran to the connection's end."""
    content = bytearray()
    coding = fields.get(b"transfer-encoding")
    length = fields.get(b"content-length")
    if coding is not None:
        if coding.rsplit(b",", 1)[-1].strip().lower() != b"chunked":
            raise BadAnswer(f"unsupported transfer coding {coding!r}")
        await _read_chunked(reader, content, status=status, max_body=max_body, keep_body=keep_body)
    elif status in (204, 304):
        pass
    elif length is not None:
        values = {value.strip() for value in length.split(b",")}
        if len(values) != 1 or not next(iter(values)).isdigit():
            raise BadAnswer(f"invalid Content-Length {length!r}")
        size = int(next(iter(values)))
        if size > max_body:
            raise TooLarge(status, max_body)
        if size:
            data = await reader.readexactly(size)
            if keep_body:
                content += data
    else:
        size = 0
        while chunk := await reader.read(READ_CHUNK):
            size += len(chunk)
            if size > max_body:
                raise TooLarge(status, max_body)
            if keep_body:
                content += chunk
        return content, True
    return content, False


def _parse_head(head: bytes) -> tuple[bytes, int, dict[bytes, bytes]]:
    lines = head[:-4].split(b"\r\n")
    version, _, rest = lines[0].partition(b" ")
    code = rest[:3]
    if version not in _VERSIONS or not code.isdigit() or len(code) != 3 or rest[3:4] not in (b"", b" "):
        raise BadAnswer(f"not an HTTP/1.x status line: {lines[0][:100]!r}")
    fields: dict[bytes, bytes] = {}
    for line in lines[1:]:
        name, colon, value = line.partition(b":")
        if not colon or not name or name != name.strip() or b" " in name or b"\t" in name:
            raise BadAnswer(f"invalid header line {line[:100]!r}")
        name = name.lower()
        value = value.strip(b" \t")
        # Repeated fields combine as one list (RFC 9110 5.3); Content-Length repeats are checked by the caller.
        fields[name] = fields[name] + b", " + value if name in fields else value
    return version, int(code), fields


def _has_token(value: bytes | None, token: bytes) -> bool:
    return value is not None and any(part.strip().lower() == token for part in value.split(b","))


async def _read_chunked(
    reader: asyncio.StreamReader, content: bytearray, *, status: int, max_body: int, keep_body: bool
) -> None:
    size_total = 0
    while True:
        line = await reader.readuntil(b"\r\n")
        digits = line.split(b";", 1)[0].strip()
        try:
            size = int(digits, 16)
        except ValueError:
            raise BadAnswer(f"invalid chunk size {digits[:20]!r}") from None
        if size == 0:
            while await reader.readuntil(b"\r\n") != b"\r\n":  # trailer fields, ignored
                pass
            return
        size_total += size
        if size_total > max_body:
            raise TooLarge(status, max_body)
        data = await reader.readexactly(size + 2)
        if data[-2:] != b"\r\n":
            raise BadAnswer("a chunk does not end with CRLF")
        if keep_body:
            content += data[:-2]
