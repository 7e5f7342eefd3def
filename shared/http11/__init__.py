"""One HTTP/1.1 client for the services' own outbound requests: the detector's probes and the notifier's webhooks.

Why not httpx: measured on the project's 2-core machine, an httpx request costs about five times the CPU (a
probe 0.25 ms against 1.3 ms; an httpx ``AsyncClient`` POSTing webhooks to a loopback receiver peaked near
1,200 requests/s and slowed down as concurrency grew, its pool rescanning every connection for every request).
Why not h11 over asyncio streams (both callers spoke it before): a StreamReader and a StreamWriter per
connection and their wakeups, and h11's validation and state machines for every request and answer, took
about half of a probe's CPU and more of the notifier's event loop than anything else at 100,000 webhooks.

So a connection is a plain asyncio protocol (:class:`Http11Connection`, one exchange at a time, never
pipelined): the request goes out as one ``write`` of bytes, the answer is gathered in one buffer and its
future resolved once, when the answer is complete. Plainly well-formed answers (a final status, ``token:
value`` headers, at most one Content-Length, no Transfer-Encoding) are read by a fast path; every other one
(chunked, 100 Continue, folded or garbled headers, a connection closed mid-answer) is handed with every byte
received to h11, so that both callers get h11's judgement of every answer (a probe's verdict rests on it).

This package owns what both callers share: resolving the host (through :class:`shared.resolver.Resolver`,
cached), checking every resolved address before connecting when the caller has a rule for them (the
notifier's rule against private targets), connecting to one of them (TLS verified against the host name
when a context is given; the peer certificate through :meth:`Http11Connection.get_extra_info`), rendering
requests, and the exchange. What differs stays with the callers: the webhooks keep connections alive per
origin and ignore the answer's body; the probes connect afresh for each exchange and drop the connection
after it (a probe must prove that the target still accepts connections). Timeouts are the caller's
(``asyncio.timeout`` around the call, or a timer calling :meth:`Http11Connection.time_out`, as the webhooks do);
failures come out as the exceptions of the step that failed.
"""

from __future__ import annotations

import asyncio
import os
import ssl
from collections.abc import Awaitable, Callable, Sequence
from typing import TypeVar

from shared.http11._connection import READ_CHUNK, Answer, BadAnswer, Http11Connection, NoAnswer, TooLarge
from shared.http11._requests import RequestHead, header_lines, render_head, request_bytes, request_head
from shared.resolver import Resolver

__all__ = [
    "READ_CHUNK", "Answer", "BadAnswer", "ConnectFailed", "Http11Connection", "NoAnswer", "RequestHead", "TooLarge",
    "connect", "exchange", "first_connected", "header_lines", "render_head", "request_bytes", "request_head", "send",
]

ConnectedT = TypeVar("ConnectedT")


class ConnectFailed(OSError):
    """No address of the host accepted the connection; the last address's error is the ``__cause__``."""


async def connect(
    host: str,
    port: int,
    *,
    resolver: Resolver,
    ssl_context: ssl.SSLContext | None = None,
    check: Callable[[str], None] | None = None,
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
    loop = asyncio.get_running_loop()
    server_hostname = host if ssl_context is not None else None

    async def open_one(family: int, address: str) -> Http11Connection:
        _transport, connection = await loop.create_connection(
            Http11Connection, address, port, family=family, ssl=ssl_context, server_hostname=server_hostname,
        )
        return connection

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
            # The errno's own words: asyncio's loop says "Connect call failed (address)", uvloop "Connection
            # refused"; what a webhook's outcome or a probe's result reads must not depend on the loop.
            reason = os.strerror(exc.errno) if exc.errno else exc.strerror or str(exc) or type(exc).__name__
            failures.append(f"{address}:{port}: {reason}")
            last = exc
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

    Raises :class:`NoAnswer` (the connection ended before a complete head: h11's judgement, even when some
    bytes came), :class:`TooLarge` (more than ``max_body`` bytes of body), :class:`BadAnswer` (an answer h11
    refuses, or a body the connection's end cut short) or ``OSError`` (the connection broke).
    """
    return await send(connection, request_bytes(method, target, headers, body), max_body=max_body,
                      keep_body=keep_body)


async def send(connection: Http11Connection, request: bytes, *, max_body: int, keep_body: bool = True) -> Answer:
    """:func:`exchange` for a request already in bytes (:func:`request_bytes`, :meth:`RequestHead.payload`,
    or a caller's own rendering of a head it sends many times): one ``write``, then the answer."""
    return await connection.start(request, max_body=max_body, keep_body=keep_body)
