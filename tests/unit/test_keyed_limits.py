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


async def test_a_freed_slot_goes_to_the_first_waiter() -> None:
    limits = KeyedLimits()
    order: list[int] = []
    first_in = asyncio.Event()
    release = asyncio.Event()

    async def hold(number: int) -> None:
        async with limits.hold("a", 1):
            order.append(number)
            first_in.set()
            await release.wait()

    first = asyncio.create_task(hold(0))
    await first_in.wait()
    waiting = []
    for number in (1, 2, 3):
        waiting.append(asyncio.create_task(hold(number)))
        await asyncio.sleep(0)  # each queued before the next
    release.set()
    await asyncio.gather(first, *waiting)
    assert order == [0, 1, 2, 3]
    assert len(limits) == 0


async def test_a_waiter_cancelled_leaves_the_queue_and_the_key_is_dropped_once_idle() -> None:
    limits = KeyedLimits()
    release = asyncio.Event()
    got: list[str] = []

    async def hold(name: str) -> None:
        async with limits.hold("a", 1):
            got.append(name)
            await release.wait()

    holder = asyncio.create_task(hold("holder"))
    await asyncio.sleep(0)
    cancelled, last = asyncio.create_task(hold("cancelled")), asyncio.create_task(hold("last"))
    await asyncio.sleep(0)
    cancelled.cancel()
    await asyncio.gather(cancelled, return_exceptions=True)
    release.set()
    await asyncio.wait_for(asyncio.gather(holder, last), 5)
    assert got == ["holder", "last"]
    assert len(limits) == 0


async def test_a_waiter_cancelled_just_as_it_was_handed_the_slot_passes_it_on() -> None:
    limits = KeyedLimits()
    proceed = asyncio.Event()
    got: list[str] = []

    async def hold(name: str) -> None:
        async with limits.hold("a", 1):
            got.append(name)
            if name == "holder":
                await proceed.wait()

    holder = asyncio.create_task(hold("holder"))
    await asyncio.sleep(0)
    handed, after = asyncio.create_task(hold("handed")), asyncio.create_task(hold("after"))
    await asyncio.sleep(0)
    proceed.set()
    await asyncio.sleep(0)  # the holder leaves and hands its slot to "handed", which has not run yet
    handed.cancel()
    await asyncio.wait_for(asyncio.gather(holder, after), 5)  # a slot lost with "handed" would leave "after" waiting
    assert handed.cancelled()
    assert got == ["holder", "after"]
    assert len(limits) == 0


async def test_a_slot_freed_as_the_first_waiter_is_cancelled_goes_to_the_next_one() -> None:
    limits = KeyedLimits()
    release = asyncio.Event()
    got: list[str] = []

    async def hold(name: str) -> None:
        async with limits.hold("a", 1):
            got.append(name)
            if name == "holder":
                await release.wait()

    holder = asyncio.create_task(hold("holder"))
    await asyncio.sleep(0)
    cancelled, last = asyncio.create_task(hold("cancelled")), asyncio.create_task(hold("last"))
    await asyncio.sleep(0)
    release.set()  # the holder leaves before the cancelled waiter has left the queue
    cancelled.cancel()
    done = await asyncio.wait_for(asyncio.gather(holder, cancelled, last, return_exceptions=True), 5)
    assert isinstance(done[1], asyncio.CancelledError)
    assert (done[0], done[2]) == (None, None)
    assert got == ["holder", "last"]
    assert len(limits) == 0
