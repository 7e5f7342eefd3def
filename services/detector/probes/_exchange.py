"""One probe's HTTP/1.1 exchange as a plain asyncio protocol: the cheap path of the probes' CPU.

A probe sends one request on a fresh connection and reads one answer. Through asyncio streams and h11 this
cost about half of a probe's CPU (a StreamReader, a StreamWriter and their wakeups, h11 validating the
request's headers and stepping its state machines for every probe). Here the connection's protocol writes
the request in one write as soon as it is connected (its head rendered once per target, with h11's bytes,
and kept by the caller), collects the answer in its own buffer, and wakes the probe once, when the answer is complete.

The answer is read by a fast path only when it is plainly well-formed: a valid status line of a final
(non-1xx) status, header lines of a token, a colon and a value, no Transfer-Encoding, at most one
Content-Length of digits, not the answer to HEAD nor a 204/304. Everything else (chunked bodies, 100
Continue, folded or malformed headers, a connection closed in the middle) is handed, with every byte
received so far, to h11 (fed the same request), so that every unusual answer is judged exactly as before,
errors included. The caller bounds the exchange with its timeout; on cancellation the connection is dropped.

Connecting tries every resolved address in turn (:func:`shared.http11.first_connected`) with this protocol
instead of streams; the failures are :mod:`shared.http11`'s, so the probes' reason codes are unchanged.
"""

from __future__ import annotations

import asyncio
import re
import ssl
from dataclasses import dataclass

import h11

from shared.http11 import READ_CHUNK, Answer, NoAnswer, TooLarge, first_connected
from shared.resolver import Resolver

__all__ = ["RequestHead", "open_exchange", "render_head"]

_STATUS_LINE = re.compile(rb"HTTP/1\.[01] ([2-9][0-9][0-9])(?: [\t\x20-\x7e\x80-\xff]*)?")
_HEADER_LINE = re.compile(rb"([!#$%&'*+\-.^_`|~0-9A-Za-z]+):[ \t]*([\t\x20-\x7e\x80-\xff]*?)[ \t]*")
_DIGITS = re.compile(rb"[0-9]{1,18}")


@dataclass(frozen=True, slots=True)
class RequestHead:
    """A request without its body: the fields (for h11, when it must take over) and its head's bytes."""

    method: str
    target: str
    headers: tuple[tuple[str, str], ...]  # without Content-Length
    prefix: bytes  # request line and headers, without Content-Length and the blank line
    with_length: bool  # a Content-Length is sent (a body, or a method that has one)

    def payload(self, body: bytes) -> bytes:
        if not self.with_length:
            return self.prefix + b"\r\n" + body
        return b"%sContent-Length: %d\r\n\r\n%s" % (self.prefix, len(body), body)

    def h11_headers(self, body: bytes) -> list[tuple[str, str]]:
        length = [("Content-Length", str(len(body)))] if self.with_length else []
        return [*self.headers, *length]


def render_head(method: str, target: str, headers: tuple[tuple[str, str], ...], *, with_length: bool) -> RequestHead:
    """The head of a request, rendered once per target: directly when every field is plain ASCII that h11
    would accept and write unchanged (the bytes are h11's), by h11 otherwise (which raises
    ``h11.LocalProtocolError`` for what it refuses)."""
    if _plain_head(method, target, headers):
        lines = [f"{method} {target} HTTP/1.1\r\n", *(f"{name}: {value}\r\n" for name, value in headers)]
        return RequestHead(method, target, headers, "".join(lines).encode("ascii"), with_length)
    data = h11.Connection(h11.CLIENT).send(h11.Request(method=method, target=target, headers=list(headers)))
    assert data is not None and data.endswith(b"\r\n\r\n")
    return RequestHead(method, target, headers, data[:-2], with_length)


_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_TARGET = re.compile(r"[\x21-\x7e]+")
_VALUE = re.compile(r"(?:[\x21-\x7e](?:[\x20-\x7e]*[\x21-\x7e])?)?")
_FRAMING = frozenset({"host", "content-length", "transfer-encoding"})


def _plain_head(method: str, target: str, headers: tuple[tuple[str, str], ...]) -> bool:
    # h11 writes the Host header first and checks framing headers: only a head that starts with the one
    # Host header and has no framing header of its own is rendered here.
    if not headers or headers[0][0].lower() != "host":
        return False
    if _TOKEN.fullmatch(method) is None or _TARGET.fullmatch(target) is None:
        return False
    for index, (name, value) in enumerate(headers):
        if _TOKEN.fullmatch(name) is None or _VALUE.fullmatch(value) is None:
            return False
        if index and name.lower() in _FRAMING:
            return False
    return True


class _ProbeExchange(asyncio.Protocol):
    """Writes the request once connected; resolves ``answer`` once with the whole answer or the failure."""

    def __init__(self, head: RequestHead, body: bytes, max_body: int, answer: asyncio.Future[Answer]) -> None:
        self._head = head
        self._body = body
        self._max_body = max_body
        self.answer = answer
        self.transport: asyncio.Transport | None = None
        self._buffer = bytearray()
        self._status = 0
        self._headers: list[tuple[bytes, bytes]] = []
        self._body_start = -1  # where the body starts in the buffer, once the head was read
        self._length: int | None = None  # Content-Length; None: the body ends with the connection
        self._h11: h11.Connection | None = None  # h11 took over
        self._h11_response: h11.Response | None = None
        self._h11_eof = False
        self._size = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        transport.write(self._head.payload(self._body))

    def data_received(self, data: bytes) -> None:
        if self.answer.done():
            return
        if self._h11 is not None:
            self._h11.receive_data(data)
            self._pump()
            return
        self._buffer += data
        if self._body_start < 0:
            end = self._buffer.find(b"\r\n\r\n")
            if end < 0:
                if len(self._buffer) > READ_CHUNK:
                    self._take_over()
                return
            if not self._read_head(end):
                self._take_over()
                return
            if self.answer.done():
                return
        received = len(self._buffer) - self._body_start
        if self._length is not None:
            if received >= self._length:
                self._finish(bytes(self._buffer[self._body_start : self._body_start + self._length]))
        elif received > self._max_body:
            self._fail(TooLarge(self._status, self._max_body))

    def eof_received(self) -> bool:
        self._eof()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        if self.answer.done():
            return
        if exc is not None:
            self.answer.set_exception(exc)
        else:
            self._eof()
        if not self.answer.done():  # h11 wanted more than a closed connection will ever bring
            self.answer.set_exception(NoAnswer("the connection closed in the middle of the answer"))

    def _eof(self) -> None:
        if self.answer.done():
            return
        if self._h11 is None:
            if not self._buffer:
                self._fail(NoAnswer("the server closed the connection without answering"))
                return
            if self._body_start >= 0 and self._length is None:
                self._finish(bytes(self._buffer[self._body_start :]))
                return
            self._take_over()  # an incomplete head or body: h11 says what is wrong with it
            if self.answer.done():
                return
        assert self._h11 is not None
        self._h11_eof = True
        self._h11.receive_data(b"")
        self._pump()

    def _read_head(self, end: int) -> bool:
        lines = bytes(self._buffer[:end]).split(b"\r\n")
        status = _STATUS_LINE.fullmatch(lines[0])
        if status is None:
            return False
        self._status = int(status[1])
        if self._status in (204, 304) or self._head.method == "HEAD":
            return False
        headers = []
        length: int | None = None
        for line in lines[1:]:
            header = _HEADER_LINE.fullmatch(line)
            if header is None:
                return False
            name = header[1].lower()
            if name == b"transfer-encoding":
                return False
            if name == b"content-length":
                if length is not None or _DIGITS.fullmatch(header[2]) is None:
                    return False
                length = int(header[2])
            headers.append((name, header[2]))
        if length is not None and length > self._max_body:
            self._fail(TooLarge(self._status, self._max_body))
            return True
        self._headers, self._length, self._body_start = headers, length, end + 4
        return True

    def _take_over(self) -> None:
        """Hand the exchange to h11: it is sent the same request and given every byte received so far."""
        protocol = h11.Connection(h11.CLIENT, max_incomplete_event_size=READ_CHUNK)
        head, body = self._head, self._body
        protocol.send(h11.Request(method=head.method, target=head.target, headers=head.h11_headers(body)))
        if body:
            protocol.send(h11.Data(data=body))
        protocol.send(h11.EndOfMessage())
        self._h11 = protocol
        data, self._buffer = bytes(self._buffer), bytearray()
        protocol.receive_data(data)
        self._pump()

    def _pump(self) -> None:
        protocol = self._h11
        assert protocol is not None
        while not self.answer.done():
            try:
                event = protocol.next_event()
            except h11.RemoteProtocolError as exc:
                if self._h11_response is None and self._h11_eof:
                    self._fail(NoAnswer("the server closed the connection without answering"))
                else:
                    self._fail(exc)
                return
            if event is h11.NEED_DATA:
                return
            if isinstance(event, h11.Response):
                self._h11_response = event
            elif isinstance(event, h11.Data):
                self._size += len(event.data)
                if self._size > self._max_body:
                    assert self._h11_response is not None
                    self._fail(TooLarge(self._h11_response.status_code, self._max_body))
                    return
                self._buffer += event.data
            elif isinstance(event, h11.EndOfMessage | h11.ConnectionClosed) or event is h11.PAUSED:
                response = self._h11_response
                if response is None:
                    self._fail(NoAnswer("the server closed the connection without answering"))
                    return
                self._status, self._headers = response.status_code, list(response.headers)
                self._finish(bytes(self._buffer))
                return
            # An InformationalResponse (100 Continue) is not the answer: read on.

    def _finish(self, body: bytes) -> None:
        if not self.answer.done():
            self.answer.set_result(Answer(self._status, self._headers, body, False))
        if self.transport is not None:
            self.transport.abort()

    def _fail(self, exc: BaseException) -> None:
        if not self.answer.done():
            self.answer.set_exception(exc)
        if self.transport is not None:
            self.transport.abort()


async def open_exchange(
    host: str, port: int, *, resolver: Resolver, ssl_context: ssl.SSLContext | None, head: RequestHead, body: bytes,
    max_body: int,
) -> tuple[asyncio.Future[Answer], asyncio.Transport]:
    """Connect to ``host`` (as :func:`shared.http11.connect` does: every resolved address in turn, TLS verified
    for ``host``) with the request written at once; return the future of its answer and the transport (the
    caller aborts it when done or given up).

    Raises ``socket.gaierror``, ``ssl.SSLError`` or :class:`shared.http11.ConnectFailed`; the answer's future
    fails with :class:`NoAnswer`, :class:`TooLarge`, ``h11.RemoteProtocolError`` or ``OSError``.
    """
    loop = asyncio.get_running_loop()
    addresses = await resolver.resolve(host, port)

    async def open_one(family: int, address: str) -> tuple[asyncio.Future[Answer], asyncio.Transport]:
        answer: asyncio.Future[Answer] = loop.create_future()
        transport, _ = await loop.create_connection(
            lambda: _ProbeExchange(head, body, max_body, answer), address, port, family=family, ssl=ssl_context,
            server_hostname=host if ssl_context is not None else None,
        )
        return answer, transport

    return await first_connected(host, port, addresses, open_one)
