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


class _Queue:
    """Key "a" (limit 1): a holder that waits for ``release``, then two waiters queued behind it in turn."""

    def __init__(self) -> None:
        self.limits = KeyedLimits()
        self.release = asyncio.Event()
        self.got: list[str] = []

    async def _hold(self, name: str) -> None:
        async with self.limits.hold("a", 1):
            self.got.append(name)
            if name == "holder":
                await self.release.wait()

    async def start(self, first: str, second: str) -> tuple[asyncio.Task[None], ...]:
        holder = asyncio.create_task(self._hold("holder"))
        await asyncio.sleep(0)
        waiters = asyncio.create_task(self._hold(first)), asyncio.create_task(self._hold(second))
        await asyncio.sleep(0)
        return holder, *waiters


async def test_a_waiter_cancelled_leaves_the_queue_and_the_key_is_dropped_once_idle() -> None:
    queue = _Queue()
    holder, cancelled, last = await queue.start("cancelled", "last")
    cancelled.cancel()
    await asyncio.gather(cancelled, return_exceptions=True)
    queue.release.set()
    await asyncio.wait_for(asyncio.gather(holder, last), 5)
    assert queue.got == ["holder", "last"]
    assert len(queue.limits) == 0


async def test_a_waiter_cancelled_just_as_it_was_handed_the_slot_passes_it_on() -> None:
    queue = _Queue()
    holder, handed, after = await queue.start("handed", "after")
    queue.release.set()
    await asyncio.sleep(0)  # the holder leaves and hands its slot to "handed", which has not run yet
    handed.cancel()
    await asyncio.wait_for(asyncio.gather(holder, after), 5)  # a slot lost with "handed" would leave "after" waiting
    assert handed.cancelled()
    assert queue.got == ["holder", "after"]
    assert len(queue.limits) == 0


async def test_a_slot_freed_as_the_first_waiter_is_cancelled_goes_to_the_next_one() -> None:
    queue = _Queue()
    holder, cancelled, last = await queue.start("cancelled", "last")
    queue.release.set()  # the holder leaves before the cancelled waiter has left the queue
    cancelled.cancel()
    done = await asyncio.wait_for(asyncio.gather(holder, cancelled, last, return_exceptions=True), 5)
    assert isinstance(done[1], asyncio.CancelledError)
    assert (done[0], done[2]) == (None, None)
    assert queue.got == ["holder", "last"]
    assert len(queue.limits) == 0
