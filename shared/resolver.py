"""Name resolution, cached and shared: the detector's probes and the notifier's webhooks use this one resolver.

asyncio resolves names with ``getaddrinfo`` in a small thread pool (a handful of threads). Thousands of
EO endpoints (AS4 endpoints probed, webhooks posted to), many of them behind the same access-point or
hosting provider, would otherwise queue up there, and a probe waiting for a thread would time out: a false
alarm caused by the detector itself. So a host is resolved once per ``ttl_s`` however many targets use it,
concurrent look-ups of one host share a single lookup, and a failed lookup is remembered briefly
(``negative_ttl_s``) so that a broken name does not hammer the resolver either.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

Address = tuple[int, str]  # (address family, IP)
Lookup = Callable[[str, int], Awaitable[list[Address]]]


async def system_lookup(host: str, port: int) -> list[Address]:
    """The addresses of ``host`` from the system resolver, in its order, without duplicates."""
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    addresses: list[Address] = []
    for family, _type, _proto, _name, sockaddr in infos:
        address = (int(family), str(sockaddr[0]))
        if address not in addresses:
            addresses.append(address)
    return addresses


@dataclass(frozen=True)
class _Entry:
    expires: float
    addresses: list[Address] | None = None
    error: socket.gaierror | None = None


class Resolver:
    """Resolves host names (see the module docstring). IP literals never reach the resolver."""

    def __init__(
        self,
        *,
        lookup: Lookup = system_lookup,
        ttl_s: float = 60.0,
        negative_ttl_s: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
        max_entries: int = 50_000,
    ) -> None:
        self._lookup = lookup
        self._ttl_s = ttl_s
        self._negative_ttl_s = negative_ttl_s
        self._clock = clock
        self._max_entries = max_entries
        self._cache: dict[str, _Entry] = {}
        # Per host: its one address when it is an IP literal, None when it is a name. Parsing a literal
        # (``ipaddress``) was about 4 % of a probe worker's CPU at 40,000 loopback targets, once per probe.
        self._literals: dict[str, list[Address] | None] = {}
        self._pending: dict[str, asyncio.Future[list[Address]]] = {}

    async def resolve(self, host: str, port: int) -> list[Address]:
        """The addresses to try for ``host``; raises socket.gaierror when the name does not resolve."""
        try:
            literal = self._literals[host]
        except KeyError:
            literal = self._literal(host)
        if literal is not None:
            return literal
        entry = self._cache.get(host)
        if entry is not None and entry.expires > self._clock():
            if entry.error is not None:
                raise entry.error
            assert entry.addresses is not None
            return entry.addresses
        pending = self._pending.get(host)
        if pending is None:
            pending = asyncio.ensure_future(self._resolve(host, port))
            pending.add_done_callback(_retrieve)
            self._pending[host] = pending
        # Shielded: a probe that times out must not cancel the lookup other probes wait for.
        return await asyncio.shield(pending)

    def _literal(self, host: str) -> list[Address] | None:
        literal: list[Address] | None
        try:
            ip = ipaddress.ip_address(host)
        except ValueError:
            literal = None
        else:
            literal = [(socket.AF_INET6 if ip.version == 6 else socket.AF_INET, host)]
        if len(self._literals) >= self._max_entries:
            self._literals.clear()
        self._literals[host] = literal
        return literal

    async def _resolve(self, host: str, port: int) -> list[Address]:
        try:
            addresses = await self._lookup(host, port)
        except socket.gaierror as exc:
            self._store(host, _Entry(self._clock() + self._negative_ttl_s, error=exc))
            raise
        finally:
            self._pending.pop(host, None)
        if not addresses:
            error = socket.gaierror(socket.EAI_NONAME, f"no address for {host}")
            self._store(host, _Entry(self._clock() + self._negative_ttl_s, error=error))
            raise error
        self._store(host, _Entry(self._clock() + self._ttl_s, addresses=addresses))
        return addresses

    def _store(self, host: str, entry: _Entry) -> None:
        if len(self._cache) >= self._max_entries:
            now = self._clock()
            self._cache = {h: e for h, e in self._cache.items() if e.expires > now}
            if len(self._cache) >= self._max_entries:
                self._cache.clear()
        self._cache[host] = entry


def _retrieve(future: asyncio.Future[list[Address]]) -> None:
    # Every waiter may have given up (timed out); the outcome is still consumed, never reported as lost.
    if not future.cancelled():
        future.exception()
