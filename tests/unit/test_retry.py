"""Unit tests of the one retry policy (shared/retry.py) and of its users' schedules: injected clock, sleep and
random source, never a wall-clock wait."""

from __future__ import annotations

import asyncio
import random
from typing import Any, cast

import pytest
from aiokafka import ConsumerRecord

from shared.config import KafkaSettings
from shared.events import AvailabilityData, CloudEvent, DeadLetterData
from shared.kafka import EventConsumer, Publisher, ensure_topics
from shared.retry import Backoff, RetryPolicy, retrying
from tests.support import free_port


class Edge(random.Random):
    """Draws the bottom or the top of every range."""

    def __init__(self, *, top: bool) -> None:
        super().__init__()
        self.top = top

    def uniform(self, a: float, b: float) -> float:
        return b if self.top else a


class FakeTime:
    """A clock that only moves when the code under test sleeps; records the sleeps."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.sleeps: list[float] = []

    def clock(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


class Flaky:
    """Fails ``failures`` times with ``error``, then answers ``result``."""

    def __init__(self, failures: int, error: Exception | None = None, result: str = "done") -> None:
        self.failures = failures
        self.error = error or ConnectionError("refused")
        self.result = result
        self.calls = 0

    async def __call__(self) -> str:
        self.calls += 1
        if self.calls <= self.failures:
            raise self.error
        return self.result

    async def without_result(self) -> None:
        await self()


# --- the policy ---------------------------------------------------------------------------------------------


def test_backoff_doubles_from_the_first_pause_up_to_the_cap() -> None:
    backoff = Backoff(first_s=0.5, max_s=3.0)
    assert [backoff.delay_s(n) for n in range(1, 7)] == [0.5, 1.0, 2.0, 3.0, 3.0, 3.0]


def test_backoff_without_a_cap_keeps_doubling_and_factor_one_is_constant() -> None:
    assert [Backoff(first_s=0.5).delay_s(n) for n in (1, 2, 3, 4, 5)] == [0.5, 1.0, 2.0, 4.0, 8.0]
    assert [Backoff(first_s=1.0, factor=1.0).delay_s(n) for n in (1, 2, 50)] == [1.0, 1.0, 1.0]


def test_backoff_survives_thousands_of_failures() -> None:
    assert Backoff(first_s=1.0, max_s=300.0).delay_s(5000) == 300.0
    assert Backoff(first_s=1.0).delay_s(5000) == float("inf")


def test_full_jitter_spans_zero_to_the_ceiling() -> None:
    backoff = Backoff(first_s=1.0, max_s=300.0, jitter=True)
    assert backoff.delay_s(4, rng=Edge(top=False)) == 0.0
    assert backoff.delay_s(4, rng=Edge(top=True)) == 8.0
    rng = random.Random(11)
    drawn = [backoff.delay_s(6, rng=rng) for _ in range(50)]
    assert all(0.0 <= d <= 32.0 for d in drawn)
    assert len(set(drawn)) > 40  # a herd is spread, not synchronised


def test_a_backoff_that_shrinks_or_goes_negative_is_refused() -> None:
    with pytest.raises(ValueError, match="factor"):
        Backoff(first_s=1.0, factor=0.5)
    with pytest.raises(ValueError, match="first_s"):
        Backoff(first_s=-1.0)


def test_the_policy_gives_up_after_its_attempts_or_its_time() -> None:
    policy = RetryPolicy(Backoff(first_s=1.0), max_attempts=3, max_elapsed_s=60.0)
    assert policy.next_delay_s(attempt=1) == 1.0
    assert policy.next_delay_s(attempt=2, elapsed_s=59.9) == 2.0
    assert policy.next_delay_s(attempt=3) is None
    assert policy.next_delay_s(attempt=1, elapsed_s=60.0) is None
    assert RetryPolicy(Backoff(first_s=1.0)).next_delay_s(attempt=10_000, elapsed_s=1e9) is not None


# --- retrying -----------------------------------------------------------------------------------------------


async def test_retrying_waits_the_policys_pauses_and_returns_the_result() -> None:
    time = FakeTime()
    call = Flaky(failures=3)
    seen: list[tuple[int, str, float | None]] = []
    result = await retrying(call, policy=RetryPolicy(Backoff(first_s=0.5), max_attempts=5), sleep=time.sleep,
                            clock=time.clock, on_failure=lambda n, exc, delay: seen.append((n, str(exc), delay)))
    assert result == "done" and call.calls == 4
    assert time.sleeps == [0.5, 1.0, 2.0]
    assert seen == [(1, "refused", 0.5), (2, "refused", 1.0), (3, "refused", 2.0)]


async def test_retrying_raises_the_last_failure_when_the_attempts_are_spent() -> None:
    time = FakeTime()
    call = Flaky(failures=10)
    seen: list[float | None] = []
    with pytest.raises(ConnectionError, match="refused"):
        await retrying(call, policy=RetryPolicy(Backoff(first_s=0.5), max_attempts=3), sleep=time.sleep,
                       clock=time.clock, on_failure=lambda _n, _exc, delay: seen.append(delay))
    assert call.calls == 3 and time.sleeps == [0.5, 1.0]
    assert seen == [0.5, 1.0, None]  # the last report says it gives up


async def test_retrying_gives_up_when_the_time_is_spent() -> None:
    time = FakeTime()
    call = Flaky(failures=100)
    with pytest.raises(ConnectionError):
        await retrying(call, policy=RetryPolicy(Backoff(first_s=1.0, factor=1.0), max_elapsed_s=10.0),
                       sleep=time.sleep, clock=time.clock)
    assert call.calls == 11 and time.sleeps == [1.0] * 10


async def test_a_failure_not_worth_retrying_is_raised_at_once() -> None:
    time = FakeTime()
    call = Flaky(failures=1, error=PermissionError("wrong password"))
    seen: list[int] = []
    with pytest.raises(PermissionError):
        await retrying(call, policy=RetryPolicy(Backoff(first_s=1.0)), sleep=time.sleep, clock=time.clock,
                       retry_if=lambda exc: not isinstance(exc, PermissionError),
                       on_failure=lambda n, _exc, _delay: seen.append(n))
    assert call.calls == 1 and time.sleeps == [] and seen == []


async def test_retrying_never_swallows_a_cancellation() -> None:
    time = FakeTime()

    async def cancelled() -> None:
        raise asyncio.CancelledError

    with pytest.raises(asyncio.CancelledError):
        await retrying(cancelled, policy=RetryPolicy(Backoff(first_s=1.0)), sleep=time.sleep, clock=time.clock)
    assert time.sleeps == []


async def test_retrying_draws_the_jitter_from_the_given_source() -> None:
    time = FakeTime()
    await retrying(Flaky(failures=2), policy=RetryPolicy(Backoff(first_s=4.0, jitter=True)), sleep=time.sleep,
                   clock=time.clock, rng=Edge(top=True))
    assert time.sleeps == [4.0, 8.0]


# --- a user: the consumer's handler retries ---------------------------------------------------------------


class FakePublisher:
    def __init__(self) -> None:
        self.published: list[tuple[str, CloudEvent[Any], str | None]] = []

    async def publish(self, topic: str, event: CloudEvent[Any], *, key: str | None = None) -> None:
        self.published.append((topic, event, key))


def _consumer(publisher: FakePublisher, time: FakeTime, **options: Any) -> EventConsumer[AvailabilityData]:
    async def handler(_event: CloudEvent[AvailabilityData] | None, _record: ConsumerRecord[bytes, bytes]) -> None:
        raise AssertionError("not called: the tests give the call")

    return EventConsumer(settings=KafkaSettings(), topic="t", group_id="g", data_model=AvailabilityData,
                         publisher=cast(Publisher, publisher), handler=handler, sleep=time.sleep, **options)


RECORD = ConsumerRecord(topic="t", partition=0, offset=7, timestamp=0, timestamp_type=0, key=b"k", value=b"{}",
                        checksum=None, serialized_key_size=1, serialized_value_size=2, headers=())


async def test_a_failing_handler_is_retried_with_doubling_pauses_then_dead_lettered() -> None:
    publisher, time = FakePublisher(), FakeTime()
    consumer = _consumer(publisher, time, handler_attempts=4, retry_delay_s=0.5)
    call = Flaky(failures=100, error=RuntimeError("database away"))
    assert not await consumer._with_retries(call.without_result, [RECORD])
    assert call.calls == 4 and time.sleeps == [0.5, 1.0, 2.0]
    (_topic, letter, key), = publisher.published
    assert isinstance(letter.data, DeadLetterData) and key == "t"
    assert letter.data.reason == "handler failed 4 times: RuntimeError: database away"


async def test_a_handler_that_recovers_is_not_dead_lettered() -> None:
    publisher, time = FakePublisher(), FakeTime()
    consumer = _consumer(publisher, time, handler_attempts=5, retry_delay_s=0.5)
    assert await consumer._with_retries(Flaky(failures=2).without_result, [RECORD])
    assert time.sleeps == [0.5, 1.0] and publisher.published == []


async def test_a_stop_on_exception_ends_the_consumer_without_retry_or_dead_letter() -> None:
    class Fenced(Exception):
        pass

    publisher, time = FakePublisher(), FakeTime()
    consumer = _consumer(publisher, time, stop_on=(Fenced,))
    call = Flaky(failures=1, error=Fenced("another leader"))
    with pytest.raises(Fenced):
        await consumer._with_retries(call.without_result, [RECORD])
    assert call.calls == 1 and time.sleeps == [] and publisher.published == []


async def test_the_wait_for_the_broker_at_start_tries_every_second_until_its_timeout() -> None:
    time = FakeTime()
    unreachable = KafkaSettings(bootstrap_servers=f"127.0.0.1:{free_port()}")  # nothing listens: refused at once
    with pytest.raises(ConnectionError, match="did not answer within 3s"):
        await ensure_topics(unreachable, timeout_s=3, sleep=time.sleep, clock=time.clock)
    assert time.sleeps == [1.0, 1.0, 1.0]
