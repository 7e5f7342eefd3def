"""Real loopback servers for the probe and detector integration tests (this module holds no tests).

:class:`LoopbackServer` is an HTTP/1.1 server on 127.0.0.1, optionally TLS, running in the test's own
event loop. Its ``behaviour`` decides each answer and can be swapped while it runs: a reply, or one of
the ways a real endpoint fails (hang, reset, close without an answer). The AS4 helpers answer like an
MSH: a receipt that refers to the ping's MessageId, an ebMS error, a maintenance page.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
import struct
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from lxml import etree

EBMS_NS = "http://docs.oasis-open.org/ebxml-msg/ebms/v3.0/ns/core/200704/"
SOAP12_NS = "http://www.w3.org/2003/05/soap-envelope"


@dataclass(frozen=True)
class Request:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes

    def message_id(self) -> str | None:
        """The eb:MessageId of an AS4 ping (parsed with lxml, entities off)."""
        parser = etree.XMLParser(resolve_entities=False, no_network=True, load_dtd=False)
        root = etree.fromstring(self.body, parser)
        return root.findtext(f".//{{{EBMS_NS}}}UserMessage/{{{EBMS_NS}}}MessageInfo/{{{EBMS_NS}}}MessageId")


@dataclass(frozen=True)
class Reply:
    status: int = 200
    body: bytes = b"ok"
    content_type: str = "text/plain"
    chunked: bool = False
    extra_headers: tuple[tuple[str, str], ...] = ()

    def encode(self) -> bytes:
        head = [f"HTTP/1.1 {self.status} X", f"Content-Type: {self.content_type}", "Connection: close"]
        head += [f"{k}: {v}" for k, v in self.extra_headers]
        if self.chunked:
            head.append("Transfer-Encoding: chunked")
            half = len(self.body) // 2
            chunks = [self.body[:half], self.body[half:]]
            payload = b"".join(f"{len(c):x}\r\n".encode() + c + b"\r\n" for c in chunks if c) + b"0\r\n\r\n"
        else:
            head.append(f"Content-Length: {len(self.body)}")
            payload = self.body
        return ("\r\n".join(head) + "\r\n\r\n").encode() + payload


class Hang:
    """Accept, read the request, never answer."""


class Reset:
    """Read the request, then reset the connection (RST)."""


class CloseSilently:
    """Read the request, then close the connection without an answer."""


Outcome = Reply | Hang | Reset | CloseSilently
Behaviour = Callable[[Request], Awaitable[Outcome] | Outcome]


def static(outcome: Outcome) -> Behaviour:
    return lambda _request: outcome


@dataclass
class LoopbackServer:
    behaviour: Behaviour = field(default_factory=lambda: static(Reply()))
    tls: ssl.SSLContext | None = None
    requests: list[Request] = field(default_factory=list)
    _server: asyncio.Server | None = None
    _closing: asyncio.Event = field(default_factory=asyncio.Event)
    port: int = 0

    async def start(self) -> LoopbackServer:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0, ssl=self.tls)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    def url(self, path: str = "/") -> str:
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.port}{path}"

    async def close(self) -> None:
        self._closing.set()
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                async with asyncio.timeout(2):
                    await self._server.wait_closed()
            self._server = None

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            async with asyncio.timeout(30):  # bounded even when a client misbehaves
                request = await self._read(reader)
                self.requests.append(request)
                outcome = self.behaviour(request)
                if not isinstance(outcome, Reply | Hang | Reset | CloseSilently):
                    outcome = await outcome
                if isinstance(outcome, Hang):
                    await self._closing.wait()
                elif isinstance(outcome, Reset):
                    sock = writer.get_extra_info("socket")
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                    writer.transport.abort()
                    return
                elif isinstance(outcome, Reply):
                    writer.write(outcome.encode())
                    await writer.drain()
        except (OSError, asyncio.IncompleteReadError, ssl.SSLError, TimeoutError):
            pass  # the client went away (or never completed TLS): nothing to answer
        finally:
            writer.close()

    @staticmethod
    async def _read(reader: asyncio.StreamReader) -> Request:
        head = await reader.readuntil(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        method, path, _ = lines[0].split(" ", 2)
        headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:] if line)}
        body = await reader.readexactly(int(headers.get("content-length", "0")))
        return Request(method, path, headers, body)


# --- an MSH --------------------------------------------------------------------------------------


def receipt_for(request: Request) -> Reply:
    """A synchronous eb:Receipt that refers to the ping's MessageId."""
    body = (
        f'<?xml version="1.0" encoding="UTF-8"?><env:Envelope xmlns:env="{SOAP12_NS}" xmlns:eb="{EBMS_NS}">'
        f'<env:Header><eb:Messaging env:mustUnderstand="true"><eb:SignalMessage><eb:MessageInfo>'
        f"<eb:Timestamp>2024-03-01T12:00:00.000Z</eb:Timestamp><eb:MessageId>receipt@msh.test</eb:MessageId>"
        f"<eb:RefToMessageId>{request.message_id()}</eb:RefToMessageId></eb:MessageInfo><eb:Receipt/>"
        f"</eb:SignalMessage></eb:Messaging></env:Header><env:Body/></env:Envelope>"
    ).encode()
    return Reply(200, body, "application/soap+xml; charset=UTF-8")


def ebms_error(request: Request, code: str = "EBMS:0103", status: int = 500) -> Reply:
    """An ebMS error signal inside a SOAP fault, as an MSH that wants a signed message answers."""
    body = (
        f'<?xml version="1.0" encoding="UTF-8"?><env:Envelope xmlns:env="{SOAP12_NS}" xmlns:eb="{EBMS_NS}">'
        f'<env:Header><eb:Messaging env:mustUnderstand="true"><eb:SignalMessage><eb:MessageInfo>'
        f"<eb:Timestamp>2024-03-01T12:00:00.000Z</eb:Timestamp><eb:MessageId>error@msh.test</eb:MessageId>"
        f"<eb:RefToMessageId>{request.message_id()}</eb:RefToMessageId></eb:MessageInfo>"
        f'<eb:Error errorCode="{code}" severity="failure" shortDescription="PolicyNoncompliance" origin="security">'
        f"<eb:Description xml:lang='en'>Message must be signed</eb:Description></eb:Error></eb:SignalMessage>"
        f"</eb:Messaging></env:Header><env:Body><env:Fault><env:Code><env:Value>env:Sender</env:Value></env:Code>"
        f"<env:Reason><env:Text xml:lang='en'>PolicyNoncompliance</env:Text></env:Reason></env:Fault></env:Body>"
        f"</env:Envelope>"
    ).encode()
    return Reply(status, body, "application/soap+xml; charset=UTF-8")


MAINTENANCE = Reply(
    503, b"<html><head><title>Maintenance</title></head><body>LUCCS is being upgraded</body></html>", "text/html"
)
