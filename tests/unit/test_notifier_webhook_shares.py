"""A host's limit of webhooks in flight split among the webhook workers (``webhook_workers.shares``), and the
dispatcher handing a lane's attempts out ahead only while global slots are free."""

from __future__ import annotations

import asyncio
from typing import Any, cast

import pytest
from prometheus_client import CollectorRegistry

from services.notifier.dispatch import Dispatcher
from services.notifier.jobs import Job, Outcome
from services.notifier.metrics import NotifierMetrics
from services.notifier.webhook_workers import shares
from shared.config import NotifierSettings, Settings
from shared.events import DeliveryChannel
from tests.unit.test_notifier_dispatch_shortcuts import _job


@pytest.mark.parametrize("workers", [1, 2, 3, 7, 64])
@pytest.mark.parametrize("limit", [1, 2, 5, 20, 50, 63])
def test_the_shares_add_up_to_the_limit_and_differ_by_one_at_most(limit: int, workers: int) -> None:
    split = shares(limit, workers)
    assert len(split) == workers
    assert sum(split) == limit
    assert max(split) - min(split) <= 1
    assert split == sorted(split, reverse=True)  # the first workers take the remainder


class _Held:
    """A sender that takes ``ahead`` attempts beyond a lane's limit and holds each until released."""

    def __init__(self, ahead: int) -> None:
        self.ahead = ahead
        self.in_flight = 0
        self.most = 0
        self.release = asyncio.Event()

    async def send(self, job: Job) -> Outcome:
        self.in_flight += 1
        self.most = max(self.most, self.in_flight)
        await self.release.wait()
        self.in_flight -= 1
        return Outcome.delivered(204)

    async def aclose(self) -> None:
        pass


class _OneClaim(Dispatcher):
    def __init__(self, sender: _Held, *, concurrency: int, jobs: int) -> None:
        settings = Settings(notifier=NotifierSettings(per_host_concurrency=2, concurrency=concurrency))
        super().__init__(settings=settings, sessions=cast(Any, None), senders={DeliveryChannel.WEBHOOK: sender},
                         metrics=NotifierMetrics(CollectorRegistry()), poll_s=3600)
        self._jobs = [_job() for _ in range(jobs)]

    async def _claim_batch_of_jobs(self, *, excluding_lanes: list[str]) -> tuple[list[Job], bool]:
        jobs, self._jobs = self._jobs, []
        return jobs, True


@pytest.mark.parametrize(("concurrency", "expected"), [(100, 4), (8, 4), (6, 3), (3, 2), (2, 2)])
def test_a_lane_hands_out_its_limit_and_its_sender_s_ahead_but_never_more_than_the_global_slots(
    concurrency: int, expected: int
) -> None:
    async def scenario() -> tuple[int, int, int]:
        sender = _Held(ahead=2)
        dispatcher = _OneClaim(sender, concurrency=concurrency, jobs=20)
        await dispatcher._claim()
        lane = dispatcher._lanes["hooks.example:443"]
        await asyncio.sleep(0.05)
        most = sender.most
        sender.release.set()
        while dispatcher._outcomes.qsize() < 20:
            await asyncio.sleep(0.01)
        return most, lane.workers, dispatcher._outcomes.qsize()

    most, workers_left, outcomes = asyncio.run(scenario())
    # Limit 2, ahead 2: 4 at once while the lanes' workers hold at most half the slots; the limit otherwise.
    assert most == expected
    assert (workers_left, outcomes) == (0, 20)


class _TwoHosts(_OneClaim):
    def __init__(self, sender: _Held) -> None:
        super().__init__(sender, concurrency=8, jobs=0)
        self._jobs = [*(_job() for _ in range(10)), *(_job()._replace(lane="other.example:443") for _ in range(10))]


def test_attempts_handed_out_ahead_never_take_the_slots_another_lane_s_limit_needs() -> None:
    async def scenario() -> tuple[int, dict[str, int], int]:
        sender = _Held(ahead=2)
        dispatcher = _TwoHosts(sender)
        await dispatcher._claim()
        staffed = {name: lane.workers for name, lane in dispatcher._lanes.items()}
        tasks = dispatcher._tasks
        await asyncio.sleep(0.05)
        most = sender.most
        sender.release.set()
        while dispatcher._outcomes.qsize() < 20:
            await asyncio.sleep(0.01)
        return tasks, staffed, most

    tasks, staffed, most = asyncio.run(scenario())
    # The first lane took its limit and 2 ahead (its workers then half the 8 slots); the second its limit, and
    # no more. With the lanes' workers over half the slots, the first lane's 2 ahead gave way before sending.
    assert staffed == {"hooks.example:443": 4, "other.example:443": 2}
    assert (tasks, most) == (6, 4)
