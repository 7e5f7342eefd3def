"""``shared.keyed_limits.KeyedLimits``: at most N holders per key, keys independent, a key dropped once idle."""

from __future__ import annotations

import asyncio

from shared.keyed_limits import KeyedLimits


async def test_a_key_has_at_most_its_limit_of_holders_and_other_keys_are_not_held_back() -> None:
    limits = KeyedLimits()
    release = asyncio.Event()
    inside: dict[str, int] = {"a": 0, "b": 0}
    most: dict[str, int] = {"a": 0, "b": 0}

    async def hold(key: str) -> None:
        async with limits.hold(key, 2):
            inside[key] += 1
            most[key] = max(most[key], inside[key])
            await release.wait()
            inside[key] -= 1

    tasks = [asyncio.create_task(hold(key)) for key in ["a"] * 5 + ["b"]]
    await asyncio.sleep(0.01)
    held = dict(inside)
    release.set()
    await asyncio.gather(*tasks)
    assert held == {"a": 2, "b": 1}
    assert most == {"a": 2, "b": 1}


async def test_a_key_is_dropped_once_nothing_holds_or_waits_for_it_even_after_an_error() -> None:
    limits = KeyedLimits()
    async with limits.hold("a", 1):
        assert len(limits) == 1
    assert len(limits) == 0
    try:
        async with limits.hold("b", 1):
            raise RuntimeError("the attempt failed")
    except RuntimeError:
        pass
    assert len(limits) == 0
