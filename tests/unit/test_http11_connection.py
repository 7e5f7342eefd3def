"""shared.http11's connection protocol driven by hand (a stand-in transport): what the loopback tests cannot
order at will, bytes or the connection's end arriving before the request is written."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from shared.http11 import BadAnswer, Http11Connection, NoAnswer

REQUEST = b"GET / HTTP/1.1\r\nHost: h\r\n\r\n"


class _Transport(asyncio.Transport):
    def __init__(self) -> None:
        super().__init__()
        self.written: list[bytes] = []
        self.closing = False

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.written.append(bytes(data))

    def is_closing(self) -> bool:
        return self.closing

    def abort(self) -> None:
        self.closing = True

    def close(self) -> None:
        self.closing = True

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return default


def _connected() -> tuple[Http11Connection, _Transport]:
    connection, transport = Http11Connection(), _Transport()
    connection.connection_made(transport)
    return connection, transport


async def test_an_answer_that_came_before_the_request_is_the_first_exchanges() -> None:
    connection, transport = _connected()
    connection.data_received(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
    answer = connection.start(REQUEST, max_body=100)
    assert transport.written == [REQUEST]
    assert answer.done() and (answer.result().status, answer.result().body) == (200, b"ok")


async def test_a_garbled_head_before_the_request_is_judged_by_h11() -> None:
    connection, _transport = _connected()
    connection.data_received(b"HTTP/1.1 200 OK\r\nX A: b\r\n\r\n")
    answer = connection.start(REQUEST, max_body=100)
    assert answer.done()
    with pytest.raises(BadAnswer):
        answer.result()


async def test_a_banner_then_the_end_before_the_request_is_no_answer_but_something_came() -> None:
    connection, _transport = _connected()
    connection.data_received(b"SSH-2.0-OpenSSH_9.6\r\n")
    connection.eof_received()
    answer = connection.start(REQUEST, max_body=100)
    with pytest.raises(NoAnswer):  # as h11 over streams judged it: no HTTP answer began
        answer.result()
    assert connection.received


async def test_a_connection_ended_before_the_request_is_no_answer() -> None:
    connection, transport = _connected()
    connection.eof_received()
    transport.closing = True
    answer = connection.start(REQUEST, max_body=100)
    assert transport.written == []
    with pytest.raises(NoAnswer):
        answer.result()
    assert not connection.received


async def test_bytes_nobody_asked_for_make_a_kept_alive_connection_unusable() -> None:
    connection, _transport = _connected()
    first = connection.start(REQUEST, max_body=100)
    connection.data_received(b"HTTP/1.1 204 No Content\r\n\r\n")
    assert first.result().keep_alive and connection.usable
    connection.data_received(b"HTTP/1.1 200 OK\r\n")
    assert not connection.usable
