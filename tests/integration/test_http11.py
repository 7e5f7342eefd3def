"""shared.http11 (the one HTTP/1.1 exchange) against real loopback servers: keep-alive, answer framings (length,
chunked, to the end, 100 Continue), no answer, garbled answers, too large, refused, address check, header injection."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from shared.http11 import BadAnswer, ConnectFailed, NoAnswer, TooLarge, connect, exchange, request_bytes
from shared.resolver import Resolver
from tests.support import free_port

pytestmark = pytest.mark.integration

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]
HEADERS = [("Host", "127.0.0.1"), ("Content-Length", "2")]


async def _read_request(reader: asyncio.StreamReader) -> bytes:
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    length = next((int(line.split(b":")[1]) for line in lines if line.lower().startswith(b"content-length")), 0)
    return head + await reader.readexactly(length)


async def _serve(handler: Handler) -> tuple[asyncio.Server, int]:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await handler(reader, writer)
            await reader.read()  # until the client closes
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1]


@pytest.fixture
async def servers() -> AsyncIterator[list[asyncio.Server]]:
    started: list[asyncio.Server] = []
    yield started
    for server in started:
        server.close()
        await server.wait_closed()


async def test_two_requests_go_over_one_kept_alive_connection(servers: list[asyncio.Server]) -> None:
    accepted: list[int] = []

    async def answer_each(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.append(1)
        for n in range(2):
            await _read_request(reader)
            writer.write(b"HTTP/1.1 201 Created\r\nLocation: /x\r\nContent-Length: %d\r\n\r\n%d" % (1, n))
            await writer.drain()

    server, port = await _serve(answer_each)
    servers.append(server)
    connection = await connect("127.0.0.1", port, resolver=Resolver())
    first = await exchange(connection, method="POST", target="/a", headers=HEADERS, body=b"hi", max_body=100)
    second = await exchange(connection, method="POST", target="/b", headers=HEADERS, body=b"hi", max_body=100)
    connection.close()
    assert (first.status, first.body, first.keep_alive, first.header(b"location")) == (201, b"0", True, "/x")
    assert (second.status, second.body) == (201, b"1")
    assert len(accepted) == 1


async def test_a_server_closing_without_an_answer_is_no_answer(servers: list[asyncio.Server]) -> None:
    async def hang_up(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _read_request(reader)
        writer.close()

    server, port = await _serve(hang_up)
    servers.append(server)
    connection = await connect("127.0.0.1", port, resolver=Resolver())
    with pytest.raises(NoAnswer):
        await exchange(connection, method="POST", target="/", headers=HEADERS, body=b"hi", max_body=100)
    assert not connection.received
    connection.close()


async def test_a_body_beyond_the_bound_is_too_large_with_its_status(servers: list[asyncio.Server]) -> None:
    async def big(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _read_request(reader)
        writer.write(b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 5000\r\n\r\n" + b"x" * 5000)
        await writer.drain()

    server, port = await _serve(big)
    servers.append(server)
    connection = await connect("127.0.0.1", port, resolver=Resolver())
    with pytest.raises(TooLarge) as raised:
        await exchange(connection, method="POST", target="/", headers=HEADERS, body=b"hi", max_body=1000)
    connection.close()
    assert raised.value.status == 503


async def _answer_once(servers: list[asyncio.Server], answer: bytes, *, close: bool = False) -> int:
    async def reply(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _read_request(reader)
        writer.write(answer)
        await writer.drain()
        if close:
            writer.close()

    server, port = await _serve(reply)
    servers.append(server)
    return port


@pytest.mark.parametrize(("answer", "close", "body", "keep_alive"), [
    (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3;x=y\r\nabc\r\n2\r\nde\r\n0\r\nT: 1\r\n\r\n",
     False, b"abcde", True),
    (b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 202 Accepted\r\nContent-Length: 2\r\n\r\nok", False, b"ok", True),
    (b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nto the end", True, b"to the end", False),
    (b"HTTP/1.1 204 No Content\r\nConnection: keep-alive, close\r\n\r\n", False, b"", False),
    (b"HTTP/1.0 200 OK\r\nContent-Length: 1\r\n\r\nx", False, b"x", False),
], ids=["chunked", "100-continue", "to-the-end", "connection-close", "http-1.0"])
async def test_the_answer_is_framed_as_rfc_9112_says(
    servers: list[asyncio.Server], answer: bytes, close: bool, body: bytes, keep_alive: bool
) -> None:
    port = await _answer_once(servers, answer, close=close)
    connection = await connect("127.0.0.1", port, resolver=Resolver())
    got = await exchange(connection, method="POST", target="/", headers=HEADERS, body=b"hi", max_body=100)
    connection.close()
    assert (got.body, got.keep_alive) == (body, keep_alive)


@pytest.mark.parametrize("answer", [
    b"HTP/1.1 200 OK\r\n\r\n",
    b"HTTP/1.1 2x0 OK\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nno colon here\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nContent-Length: 1, 2\r\n\r\nx",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
])
async def test_a_garbled_answer_is_a_bad_answer(servers: list[asyncio.Server], answer: bytes) -> None:
    port = await _answer_once(servers, answer)
    connection = await connect("127.0.0.1", port, resolver=Resolver())
    with pytest.raises(BadAnswer):
        await exchange(connection, method="POST", target="/", headers=HEADERS, body=b"hi", max_body=100)
    connection.close()


async def test_a_chunked_body_beyond_the_bound_is_too_large(servers: list[asyncio.Server]) -> None:
    port = await _answer_once(servers, b"HTTP/1.1 500 Oops\r\nTransfer-Encoding: chunked\r\n\r\n80\r\n" + b"x" * 128)
    connection = await connect("127.0.0.1", port, resolver=Resolver())
    with pytest.raises(TooLarge) as raised:
        await exchange(connection, method="POST", target="/", headers=HEADERS, body=b"hi", max_body=100)
    connection.close()
    assert raised.value.status == 500


@pytest.mark.parametrize("headers", [[("X-Key", "a\r\nX-Injected: 1")], [("X-Key", "a\nb")], [("X-K\r\ney", "a")]])
def test_a_header_that_would_break_the_head_is_refused(headers: list[tuple[str, str]]) -> None:
    with pytest.raises(ValueError, match="line break or NUL"):
        request_bytes("POST", "/", [("Host", "h"), *headers], b"hi")
    with pytest.raises(ValueError, match="line break or NUL"):
        request_bytes("POST", "/\r\nX: 1", [("Host", "h")])


async def test_a_refused_connection_fails_with_the_refusal_as_its_cause() -> None:
    with pytest.raises(ConnectFailed) as raised:
        await connect("127.0.0.1", free_port(), resolver=Resolver())
    assert isinstance(raised.value.__cause__, ConnectionRefusedError)


async def test_the_address_check_refuses_before_any_connection(servers: list[asyncio.Server]) -> None:
    accepted: list[int] = []

    async def count(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.append(1)
        writer.close()

    server, port = await _serve(count)
    servers.append(server)
    checked: list[str] = []

    def refuse(address: str) -> None:
        checked.append(address)
        raise PermissionError(f"{address} is not allowed")

    async def lookup(host: str, port: int) -> list[tuple[int, str]]:
        return [(socket.AF_INET, "127.0.0.1")]

    with pytest.raises(PermissionError):
        await connect("hooks.example", port, resolver=Resolver(lookup=lookup), check=refuse)
    await asyncio.sleep(0)  # a connection, had one been made, would have been accepted by now
    assert checked == ["127.0.0.1"]
    assert accepted == []
