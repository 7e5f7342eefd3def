"""One HTTP/1.1 connection as a plain asyncio protocol, and the one reader of the answers (see the package)."""

from __future__ import annotations

import asyncio
import re
from dataclasses import dataclass
from typing import Any, cast

import h11

__all__ = ["READ_CHUNK", "Answer", "BadAnswer", "Http11Connection", "NoAnswer", "TooLarge"]

READ_CHUNK = 65_536
"""The longest answer head read (as h11's ``max_incomplete_event_size``)."""

_STATUS_LINE = re.compile(rb"HTTP/1\.([01]) ([2-9][0-9][0-9])(?: [\t\x20-\x7e\x80-\xff]*)?")
_HEADER_LINE = re.compile(rb"([!#$%&'*+\-.^_`|~0-9A-Za-z]+):[ \t]*([\t\x20-\x7e\x80-\xff]*?)[ \t]*")
_DIGITS = re.compile(rb"[0-9]{1,18}")


class NoAnswer(EOFError):
    """The server closed the connection before its answer began."""


class BadAnswer(h11.RemoteProtocolError):
    """The answer is not HTTP/1.x as h11 reads RFC 9112 (a garbled status line, header, chunk or framing,
    or a connection closed within the answer); the message is h11's.

    An ``h11.RemoteProtocolError``: the callers' handling (the probes' ``protocol_error`` reason) is h11's."""


class TooLarge(Exception):
    """The answer's body is longer than the caller accepts; ``status`` is the answer's status code."""

    def __init__(self, status: int, limit: int) -> None:
        super().__init__(f"answer larger than {limit} bytes")
        self.status = status
        self.limit = limit


@dataclass(frozen=True, slots=True)
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


class Http11Connection(asyncio.Protocol):
    """An open connection carrying one request at a time (:meth:`start`), never pipelined.

    The request goes out in one write; the answer is gathered in one buffer and its future resolved once,
    when the answer is complete. A plainly well-formed answer (a final status, ``token: value`` headers, at
    most one Content-Length of digits, no Transfer-Encoding) is read here; every other one (chunked, 1xx
    first, folded or garbled headers, a connection closed mid-answer) is handed with every byte received so
    far to h11, given a request of the same method, so that every answer is judged as h11 judges it.
    """

    __slots__ = (
        "_answer", "_body_start", "_buffer", "_closed", "_h11", "_h11_eof", "_h11_response", "_headers",
        "_keep_alive", "_keep_body", "_length", "_max_body", "_method", "_size", "_status", "_stray", "idle_since",
        "received", "transport",
    )

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.received = False
        """Whether the current exchange has received any byte (a reused connection that failed before
        receiving anything was closed by the server while idle: the request may go again on a fresh one)."""
        self.idle_since = 0.0
        self._closed = False  # the connection ended, or the server ended its side
        self._stray = False  # bytes came that no request asked for
        self._answer: asyncio.Future[Answer] | None = None
        self._method = b""
        self._max_body = 0
        self._keep_body = True
        self._buffer = bytearray()
        self._status = 0
        self._headers: list[tuple[bytes, bytes]] = []
        self._body_start = -1  # where the body starts in the buffer, once the head was read
        self._length: int | None = None  # Content-Length; None: the body ends with the connection
        self._keep_alive = False
        self._h11: h11.Connection | None = None  # h11 took over
        self._h11_response: h11.Response | None = None
        self._h11_eof = False
        self._size = 0

    @property
    def usable(self) -> bool:
        """The connection may carry a request: open, the server has not ended it, nothing unasked came."""
        return not self._closed and not self._stray and (self._answer is None or self._answer.done())

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        """The transport's ``get_extra_info`` (``peercert``, ``ssl_object``, ``peername``, ...)."""
        return self.transport.get_extra_info(name, default) if self.transport is not None else default

    def close(self) -> None:
        """Close the connection (gracefully: a TLS connection says close_notify first)."""
        self._closed = True
        if self.transport is not None:
            self.transport.close()

    def abort(self) -> None:
        """Drop the connection at once (no graceful TLS shutdown waiting for a peer's close_notify)."""
        self._closed = True
        if self.transport is not None:
            self.transport.abort()

    def time_out(self) -> None:
        """Give up on the exchange under way: its answer fails with ``TimeoutError`` and the connection is dropped
        at once (for a timer's callback: a deadline per exchange without a timeout scope around the wait; no
        graceful TLS shutdown waiting on a peer that answers nothing)."""
        answer = self._answer
        if answer is not None and not answer.done():
            answer.set_exception(TimeoutError())
            answer.exception()  # marked seen: a waiter cancelled before it resumes leaves no "never retrieved" log
        self.abort()

    def start(self, request: bytes, *, max_body: int, keep_body: bool = True) -> asyncio.Future[Answer]:
        """Write ``request`` (the whole request, in bytes) and return the future of its answer.

        The future fails with :class:`NoAnswer`, :class:`TooLarge` (more than ``max_body`` bytes of body),
        :class:`BadAnswer` or ``OSError`` (the connection broke). The body is kept unless ``keep_body`` is false.
        Whoever gives up on the future (a timeout) closes the connection.
        """
        assert self.transport is not None and (self._answer is None or self._answer.done()), "one at a time"
        first = self._answer is None
        answer = self._answer = asyncio.get_running_loop().create_future()
        self._method = request[: request.find(b" ")]
        self._max_body, self._keep_body = max_body, keep_body
        if self.received:  # a kept-alive connection's next exchange: start afresh
            self.received = False
            self._buffer = bytearray()
            self._status, self._headers, self._body_start, self._length, self._keep_alive = 0, [], -1, None, False
            self._h11_response, self._h11_eof, self._size = None, False, 0
        if not self.transport.is_closing():
            self.transport.write(request)
        if first and self._buffer:  # the server spoke before the request went out (before start was called)
            early, self._buffer = bytes(self._buffer), bytearray()
            self.data_received(early)
        if self._closed and not answer.done():  # the server ended the connection before this request
            self._eof()
            if not answer.done():
                answer.set_exception(NoAnswer("the connection closed in the middle of the answer"))
        return answer

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # A stream transport; not necessarily an ``asyncio.Transport`` instance (uvloop's are not, see
        # shared/eventloop.py), hence a cast rather than an isinstance check.
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        answer = self._answer
        if answer is None:  # the server speaks first: the bytes are the first exchange's
            self._buffer += data
            return
        if answer.done():
            self._stray = True
            return
        self.received = True
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
            if answer.done():
                return
        received = len(self._buffer) - self._body_start
        if self._length is not None:
            if received >= self._length:
                end = self._body_start + self._length
                body = bytes(self._buffer[self._body_start : end]) if self._keep_body else b""
                self._finish(body, self._keep_alive and len(self._buffer) == end)
        elif received > self._max_body:
            self._fail(TooLarge(self._status, self._max_body))

    def eof_received(self) -> bool:
        self._eof()
        self._closed = True
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self._closed = True
        answer = self._answer
        if answer is None or answer.done():
            return
        if exc is not None:
            answer.set_exception(exc)
        else:
            self._eof()
        if not answer.done():  # h11 wanted more than a closed connection will ever bring
            answer.set_exception(NoAnswer("the connection closed in the middle of the answer"))

    def _eof(self) -> None:
        answer = self._answer
        if answer is None or answer.done():
            return
        if self._h11 is None:
            if not self._buffer:
                self._fail(NoAnswer("the server closed the connection without answering"))
                return
            if self._body_start >= 0 and self._length is None:
                self._finish(bytes(self._buffer[self._body_start :]) if self._keep_body else b"", False)
                return
            self._take_over()  # an incomplete head or body: h11 says what is wrong with it
            if answer.done():
                return
        assert self._h11 is not None
        self._h11_eof = True
        self._h11.receive_data(b"")
        self._pump()

    def _read_head(self, end: int) -> bool:
        """Read a plain head (False: not plain, h11 must judge it); the answer is done when it has no body."""
        lines = bytes(self._buffer[:end]).split(b"\r\n")
        status_line = _STATUS_LINE.fullmatch(lines[0])
        if status_line is None or self._method == b"CONNECT":
            return False
        status = int(status_line[2])
        headers = []
        length: int | None = None
        close = False
        for line in lines[1:]:
            header = _HEADER_LINE.fullmatch(line)
            if header is None:
                return False
            name, value = header[1].lower(), header[2]
            if name == b"transfer-encoding":
                return False
            if name == b"content-length":
                if length is not None or _DIGITS.fullmatch(value) is None:
                    return False
                length = int(value)
            elif name == b"connection":
                close = close or any(part.strip().lower() == b"close" for part in value.split(b","))
            headers.append((name, value))
        self._status, self._headers = status, headers
        keep_alive = status_line[1] == b"1" and not close
        if status in (204, 304) or self._method == b"HEAD":  # no body, whatever the headers say
            self._finish(b"", keep_alive and len(self._buffer) == end + 4)
            return True
        if length is not None and length > self._max_body:
            self._fail(TooLarge(status, self._max_body))
            return True
        self._length, self._body_start, self._keep_alive = length, end + 4, keep_alive and length is not None
        return True

    def _take_over(self) -> None:
        """Hand the exchange to h11: it is sent a request of the same method, then every byte received so far."""
        protocol = h11.Connection(h11.CLIENT, max_incomplete_event_size=READ_CHUNK)
        try:
            protocol.send(h11.Request(method=self._method, target="/", headers=[("Host", "h")]))
            protocol.send(h11.EndOfMessage())
        except h11.LocalProtocolError as exc:  # a method h11 would not send: the request was not HTTP
            self._fail(exc)
            return
        self._h11 = protocol
        data, self._buffer = bytes(self._buffer), bytearray()
        protocol.receive_data(data)
        self._pump()

    def _pump(self) -> None:
        protocol = self._h11
        answer = self._answer
        assert protocol is not None and answer is not None
        while not answer.done():
            try:
                event = protocol.next_event()
            except h11.RemoteProtocolError as exc:
                if self._h11_response is None and self._h11_eof:
                    self._fail(NoAnswer("the server closed the connection without answering"))
                else:
                    self._fail(_bad_answer(exc))
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
                if self._keep_body:
                    self._buffer += event.data
            elif isinstance(event, h11.EndOfMessage | h11.ConnectionClosed) or event is h11.PAUSED:
                response = self._h11_response
                if response is None:
                    self._fail(NoAnswer("the server closed the connection without answering"))
                    return
                self._status, self._headers = response.status_code, list(response.headers)
                keep_alive = (isinstance(event, h11.EndOfMessage) and protocol.their_state is h11.DONE
                              and not protocol.trailing_data[0] and not self._h11_eof)
                self._finish(bytes(self._buffer), keep_alive)
                return
            # An InformationalResponse (100 Continue) is not the answer: read on.

    def _finish(self, body: bytes, keep_alive: bool) -> None:
        answer = self._answer
        assert answer is not None
        if not answer.done():
            answer.set_result(Answer(self._status, self._headers, body, keep_alive))
        self._h11 = None
        if keep_alive:  # an idle connection in a pool holds no answer
            self._buffer = bytearray()
        else:
            self.abort()

    def _fail(self, exc: BaseException) -> None:
        answer = self._answer
        assert answer is not None
        if not answer.done():
            answer.set_exception(exc)
        self._h11 = None
        self.abort()


def _bad_answer(exc: h11.RemoteProtocolError) -> BadAnswer:
    if isinstance(exc, BadAnswer):
        return exc
    bad = BadAnswer(str(exc))
    bad.__cause__ = exc
    return bad
