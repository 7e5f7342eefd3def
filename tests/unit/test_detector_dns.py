"""Unit tests of the probes' name resolution cache (with an in-memory resolver: no DNS traffic)."""

from __future__ import annotations

import asyncio
import socket

import pytest

from shared.resolver import Address, Resolver

PROVIDER: list[Address] = [(int(socket.AF_INET), "192.0.2.10"), (int(socket.AF_INET6), "2001:db8::10")]


class FakeLookup:
    def __init__(self, answers: dict[str, list[Address]], delay: float = 0.0) -> None:
        self.answers = answers
        self.delay = delay
        self.calls: list[str] = []

    async def __call__(self, host: str, port: int) -> list[Address]:
        self.calls.append(host)
        if self.delay:
            await asyncio.sleep(self.delay)
        if host not in self.answers:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return self.answers[host]


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def test_ip_literals_never_reach_the_resolver() -> None:
    lookup = FakeLookup({})
    resolver = Resolver(lookup=lookup)
    assert await resolver.resolve("127.0.0.1", 80) == [(socket.AF_INET, "127.0.0.1")]
    assert await resolver.resolve("::1", 80) == [(socket.AF_INET6, "::1")]
    assert lookup.calls == []


async def test_ip_literals_are_parsed_once_per_host_and_their_memory_is_bounded() -> None:
    lookup = FakeLookup({"as4.provider.eu": PROVIDER})
    resolver = Resolver(lookup=lookup, max_entries=2)
    for _ in range(3):  # asked again and again, past the bound: the same answers, names still looked up
        for i in range(3):
            assert await resolver.resolve(f"192.0.2.{i}", 80) == [(socket.AF_INET, f"192.0.2.{i}")]
        assert await resolver.resolve("2001:db8::1", 443) == [(socket.AF_INET6, "2001:db8::1")]
        assert await resolver.resolve("as4.provider.eu", 443) == PROVIDER
        assert len(resolver._literals) <= 2
    assert lookup.calls == ["as4.provider.eu"]


async def test_a_host_is_resolved_once_per_ttl() -> None:
    lookup, clock = FakeLookup({"as4.provider.eu": PROVIDER}), Clock()
    resolver = Resolver(lookup=lookup, ttl_s=60, clock=clock)
    for _ in range(5):
        assert await resolver.resolve("as4.provider.eu", 443) == PROVIDER
    assert lookup.calls == ["as4.provider.eu"]
    clock.now += 61
    await resolver.resolve("as4.provider.eu", 443)
    assert lookup.calls == ["as4.provider.eu"] * 2


async def test_concurrent_probes_of_one_host_share_one_lookup() -> None:
    lookup = FakeLookup({"as4.provider.eu": PROVIDER}, delay=0.05)
    resolver = Resolver(lookup=lookup)
    results = await asyncio.gather(*(resolver.resolve("as4.provider.eu", 443) for _ in range(100)))
    assert all(r == PROVIDER for r in results)
    assert lookup.calls == ["as4.provider.eu"]


async def test_a_failed_lookup_is_remembered_briefly() -> None:
    lookup, clock = FakeLookup({}), Clock()
    resolver = Resolver(lookup=lookup, negative_ttl_s=5, clock=clock)
    for _ in range(3):
        with pytest.raises(socket.gaierror):
            await resolver.resolve("gone.trader.lu", 443)
    assert lookup.calls == ["gone.trader.lu"]
    clock.now += 6
    lookup.answers["gone.trader.lu"] = PROVIDER
    assert await resolver.resolve("gone.trader.lu", 443) == PROVIDER


async def test_a_probe_that_gives_up_does_not_cancel_the_shared_lookup() -> None:
    lookup = FakeLookup({"slow.provider.eu": PROVIDER}, delay=0.1)
    resolver = Resolver(lookup=lookup)
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.01):
            await resolver.resolve("slow.provider.eu", 443)
    assert await resolver.resolve("slow.provider.eu", 443) == PROVIDER
    assert lookup.calls == ["slow.provider.eu"]


async def test_the_cache_stays_bounded() -> None:
    lookup = FakeLookup({f"h{i}.lu": PROVIDER for i in range(50)})
    resolver = Resolver(lookup=lookup, max_entries=10)
    for i in range(50):
        await resolver.resolve(f"h{i}.lu", 443)
    assert len(resolver._cache) <= 10
