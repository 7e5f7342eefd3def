"""The one HTTP/1.1 exchange (:mod:`shared.http11`) judges every answer as h11 over streams did, for the
probes and for the webhooks.

A loopback server reads the request and writes raw bytes (then closes, or hangs up in the middle); the same
answer goes to h11 over asyncio streams (the reference: how both spoke HTTP before issue 14) and to the new
path, and both must agree: the same status, headers and body, or the same class of failure. Three paths are
checked: the probes' client (a fresh connection, ``Connection: close``), the shared exchange as the webhooks
use it (no ``Connection: close``: whether the connection may carry another request must be h11's answer too),
and the webhook client itself (status and Location, or a transport error).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import h11
import pytest
from hypothesis import given
from hypothesis import strategies as st

from services.detector.probes import Connector, HttpRequest, ProbeFailure
from services.detector.probes._transport import H11Client, failure_from
from services.detector.targets import Endpoint, TlsFiles
from services.notifier.webhook_http import _MAX_RESPONSE_BYTES as WEBHOOK_MAX_BODY
from services.notifier.webhook_http import TransportError, WebhookHttpClient
from shared.http11 import READ_CHUNK, NoAnswer, TooLarge, connect, render_head, request_bytes, send
from shared.resolver import Resolver

pytestmark = pytest.mark.integration

MAX_BODY = 1000


async def _serve(answer: bytes) -> tuple[asyncio.Server, int, list[bytes]]:
    requests: list[bytes] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        length = 0
        for line in head.split(b"\r\n"):
            if line.lower().startswith(b"content-length:"):
                length = int(line.split(b":", 1)[1])
        requests.append(head + await reader.readexactly(length))
        writer.write(answer)
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1], requests


@pytest.fixture
async def servers() -> AsyncIterator[list[asyncio.Server]]:
    started: list[asyncio.Server] = []
    yield started
    for server in started:
        server.close()
        await server.wait_closed()


async def _reference(port: int, method: str, body: bytes, *, close: bool, max_body: int = MAX_BODY) -> Any:
    """h11 over asyncio streams, as the probes and the webhooks spoke it before: a failure's reason, or
    ("too_large", status), or (status, headers, body, keep-alive: the connection may carry another request)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    protocol = h11.Connection(h11.CLIENT, max_incomplete_event_size=READ_CHUNK)
    headers = [("Host", f"127.0.0.1:{port}"), *([("Connection", "close")] if close else []),
               *([("Content-Length", str(len(body)))] if body else [])]
    data = protocol.send(h11.Request(method=method, target="/x", headers=headers)) or b""
    if body:
        data += protocol.send(h11.Data(data=body)) or b""
    data += protocol.send(h11.EndOfMessage()) or b""
    writer.write(data)
    response: h11.Response | None = None
    content, eof = bytearray(), False
    try:
        await writer.drain()
        while True:
            try:
                event = protocol.next_event()
            except h11.RemoteProtocolError as exc:
                if response is None and eof:
                    return "reset"
                return failure_from(exc).reason
            if event is h11.NEED_DATA:
                chunk = await reader.read(READ_CHUNK)
                eof = not chunk
                if eof and response is None:
                    return "reset"
                protocol.receive_data(chunk)
            elif isinstance(event, h11.Response):
                response = event
            elif isinstance(event, h11.Data):
                content += event.data
                if len(content) > max_body:
                    assert response is not None
                    return "too_large", response.status_code
            elif isinstance(event, h11.EndOfMessage | h11.ConnectionClosed) or event is h11.PAUSED:
                break
    except OSError as exc:
        return failure_from(exc).reason
    finally:
        writer.transport.abort()
    if response is None:
        return "reset"
    # Not after a body the connection's end delimited, nor with bytes beyond the answer that nobody asked for.
    keep_alive = protocol.their_state is h11.DONE and not eof and not protocol.trailing_data[0]
    return response.status_code, {k.decode(): v.decode() for k, v in response.headers}, bytes(content), keep_alive


async def _old(port: int, method: str, body: bytes) -> Any:
    """The reference as the probes saw it."""
    before = await _reference(port, method, body, close=True)
    if isinstance(before, str):
        return before
    return "too_large" if before[0] == "too_large" else before[:3]


async def _new(port: int, method: str, body: bytes) -> Any:
    client = H11Client(Connector())
    request = HttpRequest(method=method, endpoint=Endpoint("http", "127.0.0.1", port, "/x"), body=body)
    try:
        answer = await client.exchange(request, tls=TlsFiles(), max_body=MAX_BODY)
    except ProbeFailure as failure:
        return failure.reason
    return answer.status, answer.headers, answer.body


ANSWERS = {
    "content-length": b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Type: text/plain\r\n\r\nok",
    "content-length, more bytes than announced": b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokAND MORE",
    "until the connection closes": b"HTTP/1.1 503 Service Unavailable\r\nX-A:  spaced value \t\r\n\r\ndown",
    "HTTP/1.0, no reason phrase": b"HTTP/1.0 200\r\nContent-Length: 0\r\n\r\n",
    "chunked": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n3\r\n!!!\r\n0\r\n\r\n",
    "100 Continue first": b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
    "204 with a length": b"HTTP/1.1 204 No Content\r\nContent-Length: 0\r\n\r\n",
    "two lengths": b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 2\r\n\r\nok",
    "two different lengths": b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nok!",
    "folded header": b"HTTP/1.1 200 OK\r\nX-A: one\r\n two\r\nContent-Length: 2\r\n\r\nok",
    "bad header name": b"HTTP/1.1 200 OK\r\nX A: one\r\nContent-Length: 2\r\n\r\nok",
    "bad length": b"HTTP/1.1 200 OK\r\nContent-Length: 2x\r\n\r\nok",
    "body cut short": b"HTTP/1.1 200 OK\r\nContent-Length: 20\r\n\r\nok",
    "head cut short": b"HTTP/1.1 200 OK\r\nContent-Len",
    "not HTTP": b"SSH-2.0-OpenSSH_9.6\r\n",
    "nothing": b"",
    "length above the limit": b"HTTP/1.1 200 OK\r\nContent-Length: 5000\r\n\r\n" + b"a" * 5000,
    "body above the limit, no length": b"HTTP/1.1 200 OK\r\n\r\n" + b"a" * 5000,
    "chunked above the limit": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n1388\r\n" + b"a" * 5000,
    "head above 64 KiB": b"HTTP/1.1 200 OK\r\nX-A: " + b"a" * 70_000 + b"\r\n\r\n",
}


@pytest.mark.parametrize("method", ["GET", "POST", "HEAD"])
@pytest.mark.parametrize("case", list(ANSWERS))
async def test_every_answer_is_judged_as_h11_over_streams_judged_it(
    servers: list[asyncio.Server], case: str, method: str
) -> None:
    server, port, requests = await _serve(ANSWERS[case])
    servers.append(server)
    body = b"<ping/>" if method == "POST" else b""
    before = await _old(port, method, body)
    after = await _new(port, method, body)
    assert after == before
    assert requests[1].split(b"\r\n", 1)[0] == f"{method} /x HTTP/1.1".encode()
    assert requests[1].endswith(b"\r\n\r\n" + body)


async def _shared(port: int, method: str, body: bytes) -> Any:
    """The shared exchange as the webhooks use it: no ``Connection: close``, the connection kept if it may be."""
    connection = await connect("127.0.0.1", port, resolver=Resolver())
    try:
        answer = await send(connection, request_bytes(method, "/x", [("Host", f"127.0.0.1:{port}")], body),
                            max_body=MAX_BODY)
    except TooLarge as exc:
        return "too_large", exc.status
    except NoAnswer:
        return "reset"
    except (OSError, h11.RemoteProtocolError) as exc:
        return failure_from(exc).reason
    finally:
        connection.abort()
    return answer.status, {k.decode(): v.decode() for k, v in answer.headers}, answer.body, answer.keep_alive


@pytest.mark.parametrize("method", ["GET", "POST", "HEAD"])
@pytest.mark.parametrize("case", list(ANSWERS))
async def test_the_webhooks_exchange_judges_every_answer_and_its_keep_alive_as_h11(
    servers: list[asyncio.Server], case: str, method: str
) -> None:
    server, port, requests = await _serve(ANSWERS[case])
    servers.append(server)
    body = b"{}" if method == "POST" else b""
    before = await _reference(port, method, body, close=False)
    after = await _shared(port, method, body)
    assert after == before
    assert requests[0].split(b"\r\n\r\n")[0] == requests[1].split(b"\r\n\r\n")[0]


@pytest.mark.parametrize("case", list(ANSWERS))
async def test_the_webhook_client_sees_the_status_h11_saw_or_a_transport_error(
    servers: list[asyncio.Server], case: str
) -> None:
    server, port, _requests = await _serve(ANSWERS[case])
    servers.append(server)
    before = await _reference(port, "POST", b"{}", close=False, max_body=WEBHOOK_MAX_BODY)
    client = WebhookHttpClient(allow_private=True)
    try:
        answer = await client.post(f"http://127.0.0.1:{port}/x", body=b"{}", headers=[], timeout_s=30)
        after: Any = answer.status, answer.location
    except TransportError:
        after = "transport_error"
    finally:
        await client.aclose()
    if isinstance(before, str):
        assert after == "transport_error"
    elif before[0] == "too_large":  # a webhook's answer body is nobody's business: the status counts
        assert after == (before[1], None)
    else:
        assert after == (before[0], before[1].get("location"))


KEPT_ALIVE = [
    b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\nX-Trailer: 1\r\n\r\n",
    b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 202 Accepted\r\nContent-Length: 0\r\n\r\n",
    b"HTTP/1.1 204 No Content\r\n\r\n",
    b"HTTP/1.1 303 See Other\r\nLocation: /next\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
]


async def test_webhooks_reuse_a_connection_across_framings_until_the_server_says_close(
    servers: list[asyncio.Server],
) -> None:
    connections: list[int] = []
    answered: list[int] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connections.append(1)
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n")
                              if line.lower().startswith(b"content-length:"))
                await reader.readexactly(length)
                answer = KEPT_ALIVE[len(answered) % len(KEPT_ALIVE)]
                answered.append(1)
                writer.write(answer)
                await writer.drain()
                if b"Connection: close" in answer:
                    break
        except asyncio.IncompleteReadError:
            pass
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    servers.append(server)
    port = server.sockets[0].getsockname()[1]
    client = WebhookHttpClient(allow_private=True)
    try:
        answers = [await client.post(f"http://127.0.0.1:{port}/hook", body=b"{}", headers=[("X-N", str(n))],
                                     timeout_s=30) for n in range(len(KEPT_ALIVE) + 1)]
    finally:
        await client.aclose()
    assert [(a.status, a.location) for a in answers] == [
        (200, None), (200, None), (202, None), (204, None), (303, "/next"), (200, None)
    ]
    assert len(connections) == 2  # the first five answers over one connection, then a fresh one after "close"


async def test_the_request_is_written_in_one_piece_with_its_length(servers: list[asyncio.Server]) -> None:
    server, port, requests = await _serve(ANSWERS["content-length"])
    servers.append(server)
    client = H11Client(Connector())
    endpoint = Endpoint("http", "127.0.0.1", port, "/msh")
    for body in (b"<short/>", b"<a longer body/>"):
        request = HttpRequest(method="POST", endpoint=endpoint, headers=(("Content-Type", "application/soap+xml"),),
                              body=body, basic_auth=("user", "pw"))
        answer = await client.exchange(request, tls=TlsFiles(), max_body=MAX_BODY)
        assert (answer.status, answer.body) == (200, b"ok")
    first, second = (h11_request(r) for r in requests)
    assert first[0] == second[0] == b"/msh"
    assert first[1][b"content-length"] == b"8" and second[1][b"content-length"] == b"16"
    assert first[1][b"authorization"] == b"Basic dXNlcjpwdw=="
    assert (first[2], second[2]) == (b"<short/>", b"<a longer body/>")


def h11_request(raw: bytes) -> tuple[bytes, dict[bytes, bytes], bytes]:
    server = h11.Connection(h11.SERVER)
    server.receive_data(raw)
    request = server.next_event()
    assert isinstance(request, h11.Request)
    body = b""
    while isinstance(event := server.next_event(), h11.Data):
        body += event.data
    return request.target, dict(request.headers), body


_TEXT = st.text(st.characters(codec="latin-1"), max_size=8)


@given(
    method=st.sampled_from(["GET", "POST", "HEAD", "G T", ""]),
    target=st.one_of(st.just("/x"), _TEXT),
    headers=st.lists(st.tuples(st.one_of(st.sampled_from(["Host", "Accept", "content-length", "X-A"]), _TEXT),
                               _TEXT), max_size=4),
    host_first=st.booleans(),
)
def test_a_head_rendered_without_h11_is_the_one_h11_renders(
    method: str, target: str, headers: list[tuple[str, str]], host_first: bool
) -> None:
    fields = tuple([("Host", "127.0.0.1:8080")] if host_first else []) + tuple(headers)
    try:
        expected: bytes | type[Exception] = h11.Connection(h11.CLIENT).send(
            h11.Request(method=method, target=target, headers=list(fields))
        ) or b""
    except Exception as exc:
        expected = type(exc)
    try:
        got: bytes | type[Exception] = render_head(method, target, fields, with_length=False).payload(b"")
    except Exception as exc:
        got = type(exc)
    assert got == expected
