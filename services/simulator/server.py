"""One simulated endpoint: its own listening socket, so that 'refuse' can really close it.

A small HTTP/1.1 server on asyncio streams with h11 doing the protocol work. Modes are enforced here:
``refuse`` closes the listening socket and drops open connections (clients get "connection refused"),
``hang`` reads a request and never answers it; every other mode is answered by :func:`behaviour.reply`.
"""

from __future__ import annotations

import asyncio
import contextlib
import http
import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

import h11

from services.simulator.behaviour import Kind, Mode, Reply, Request, reply

log = logging.getLogger("luccs_fallback.simulator")

MAX_REQUEST_BYTES = 1_048_576
IDLE_TIMEOUT_S = 60.0
_READ_CHUNK = 65_536
_KNOWN_STATUSES = frozenset(s.value for s in http.HTTPStatus)

Observer = Callable[[Request, int | None], None]
"""Called with each request read and the status it is answered with (None: never answered)."""


def _utc_now() -> datetime:
    return datetime.now(UTC)


class EndpointError(Exception):
    """A mode change could not be carried out (e.g. the port could not be reopened); the text says why."""


class _TooLarge(Exception):
    pass


@dataclass(frozen=True)
class EndpointSpec:
    """Where an endpoint listens and what it stands in for."""

    name: str
    kind: Kind
    host: str
    port: int
    path: str

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}{self.path}"


class SimulatedEndpoint:
    """An endpoint of the simulated LUCCS (or an EO's MSH, or the EO webhook receiver) and its mode."""

    def __init__(
        self, spec: EndpointSpec, *, observer: Observer | None = None, clock: Callable[[], datetime] = _utc_now
    ) -> None:
        self.spec = spec
        self.mode = Mode.OK
        self._observer = observer
        self._clock = clock
        self._server: asyncio.Server | None = None
        self._connections: set[asyncio.StreamWriter] = set()
        self._lock = asyncio.Lock()

    @property
    def listening(self) -> bool:
        return self._server is not None

    def view(self) -> dict[str, object]:
        """How the control API shows this endpoint."""
        return {
            "name": self.spec.name, "kind": self.spec.kind.value, "url": self.spec.url, "port": self.spec.port,
            "mode": self.mode.value, "listening": self.listening, "open_connections": len(self._connections),
        }

    async def set_mode(self, mode: Mode) -> None:
        """Switch to ``mode``: close the listening socket for 'refuse', (re)open it for every other mode."""
        async with self._lock:
            if mode is Mode.REFUSE:
                await self._close()
            else:
                await self._open()
            if mode is not self.mode:
                log.info("endpoint %s (%s): mode %s -> %s", self.spec.name, self.spec.url, self.mode, mode)
            self.mode = mode

    async def start(self) -> None:
        """Listen in the current mode (a no-op while refusing)."""
        async with self._lock:
            if self.mode is not Mode.REFUSE:
                await self._open()

    async def stop(self) -> None:
        """Close the listening socket and every connection."""
        async with self._lock:
            await self._close()

    async def _open(self) -> None:
        if self._server is not None:
            return
        try:
            self._server = await asyncio.start_server(
                self._serve_connection, self.spec.host, self.spec.port, reuse_address=True
            )
        except OSError as exc:
            raise EndpointError(f"{self.spec.name}: cannot listen on {self.spec.host}:{self.spec.port}: {exc}") from exc

    async def _close(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.close()
            await server.wait_closed()
        for writer in list(self._connections):
            # An abort resets the connection, as a crashed server's kernel would.
            writer.transport.abort()
        self._connections.clear()

    async def _serve_connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._connections.add(writer)
        try:
            await self._exchange(h11.Connection(h11.SERVER, max_incomplete_event_size=16_384), reader, writer)
        except (ConnectionError, TimeoutError, h11.ProtocolError, asyncio.IncompleteReadError):
            pass
        finally:
            self._connections.discard(writer)
            writer.close()
            with contextlib.suppress(ConnectionError, OSError):
                await writer.wait_closed()

    async def _exchange(self, conn: h11.Connection, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            try:
                request = await self._read_request(conn, reader)
            except _TooLarge:
                await self._send(conn, writer, Reply.text(413, "request too large\n"), head=False)
                return
            except h11.RemoteProtocolError:
                with contextlib.suppress(h11.LocalProtocolError):
                    await self._send(conn, writer, Reply.text(400, "bad request\n"), head=False)
                return
            if request is None:
                return
            if self.mode is Mode.HANG:
                self._observe(request, None)
                await _hold(reader)
                return
            answer = reply(kind=self.spec.kind, mode=self.mode, request=request, now=self._clock())
            self._observe(request, answer.status)
            await self._send(conn, writer, answer, head=request.method == "HEAD")
            if conn.our_state is h11.MUST_CLOSE or conn.their_state is h11.MUST_CLOSE:
                return
            conn.start_next_cycle()

    def _observe(self, request: Request, status: int | None) -> None:
        if self._observer is not None:
            self._observer(request, status)

    async def _read_request(self, conn: h11.Connection, reader: asyncio.StreamReader) -> Request | None:
        head: h11.Request | None = None
        body = bytearray()
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                data = await asyncio.wait_for(reader.read(_READ_CHUNK), timeout=IDLE_TIMEOUT_S)
                conn.receive_data(data)
            elif isinstance(event, h11.Request):
                head = event
            elif isinstance(event, h11.Data):
                body += event.data
                if len(body) > MAX_REQUEST_BYTES:
                    raise _TooLarge
            elif isinstance(event, h11.EndOfMessage) and head is not None:
                return Request(
                    method=head.method.decode("ascii", "replace"),
                    path=head.target.decode("ascii", "replace"),
                    headers={k.decode("latin-1").lower(): v.decode("latin-1") for k, v in head.headers},
                    body=bytes(body),
                )
            elif isinstance(event, h11.ConnectionClosed) or event is h11.PAUSED:
                return None

    async def _send(self, conn: h11.Connection, writer: asyncio.StreamWriter, answer: Reply, *, head: bool) -> None:
        headers = [
            ("Content-Type", answer.content_type), ("Content-Length", str(len(answer.body))),
            ("Server", "luccs-fallback-simulator"),
        ]
        reason = http.HTTPStatus(answer.status).phrase.encode() if answer.status in _KNOWN_STATUSES else b""
        writer.write(conn.send(h11.Response(status_code=answer.status, headers=headers, reason=reason)) or b"")
        if not head and answer.body:
            writer.write(conn.send(h11.Data(data=answer.body)) or b"")
        writer.write(conn.send(h11.EndOfMessage()) or b"")
        await writer.drain()


async def _hold(reader: asyncio.StreamReader) -> None:
    """Keep a hung connection open, unanswered, until the client gives up (or the endpoint closes it)."""
    while await reader.read(_READ_CHUNK):
        pass
