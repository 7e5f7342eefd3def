"""The dispatcher's shortcuts give what the long way gives: the deliveries feed's bytes are the
``DeliveryEvent`` model's, the webhook URL rules' verdict cached per origin is the verdict per URL, and a
claim skipped while every lane is full is one that would have found nothing."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta, timezone
from typing import Any, cast
from urllib.parse import urlsplit

import pytest
from prometheus_client import CollectorRegistry

from services.notifier import dispatch
from services.notifier.dispatch import LANE_MEMORY_S, SOURCE, Dispatcher, Recorded, delivery_event_bytes
from services.notifier.domain import Audience, url_origin, webhook_url_problem
from services.notifier.jobs import Job, Outcome
from services.notifier.metrics import NotifierMetrics
from services.notifier.webhook_http import HttpAnswer, WebhookHttpClient
from services.notifier.webhooks import WebhookSender
from shared.config import NotifierSettings, Settings
from shared.events import (
    CloudEvent,
    DeliveryChannel,
    DeliveryData,
    DeliveryEvent,
    DeliveryStatus,
    EventType,
    Language,
)


def _job(*, address: str = "https://hooks.example/eo/LU1", eori: str | None = "LU000000000001",
         channel: DeliveryChannel = DeliveryChannel.WEBHOOK, attempt: int = 1) -> Job:
    return Job(
        delivery_id="0190f3a2-0000-7000-8000-000000000001", event_id="ev-1", event_type=EventType.PROCEDURE_OPENED,
        procedure_id="P-2026-0001", eori=eori, audience=Audience.EO, channel=channel, address=address,
        lane="hooks.example:443", idempotency_key="key-1", attempt=attempt, created_at=datetime(2026, 1, 2, tzinfo=UTC),
        language=Language.FR, subject="s", message="m", webhook_body=b"{}", webhook_secret="secret",
    )


@pytest.mark.parametrize(("job", "status", "outcome", "at"), [
    (_job(), DeliveryStatus.DELIVERED, Outcome.delivered(204), datetime(2026, 12, 1, 22, 0, 0, tzinfo=UTC)),
    (_job(attempt=3), DeliveryStatus.RETRYING, Outcome.failed("HTTP 503", http_status=503),
     datetime(2026, 12, 1, 22, 0, 0, 123456, tzinfo=UTC)),
    (_job(eori=None, channel=DeliveryChannel.EMAIL, address="servicedesk@douane.example"), DeliveryStatus.DEAD,
     Outcome.failed('refusé: "quoted"\n\ttab \x00 nul \u2028 separator \\ backslash', permanent=True),
     datetime(2026, 12, 1, 22, 0, 0, 500, tzinfo=UTC)),
    (_job(address="https://hooks.example/é?x=1&y=\"2\""), DeliveryStatus.DELIVERED, Outcome.delivered(200),
     datetime(2026, 12, 1, 23, 0, tzinfo=timezone(timedelta(hours=1))).astimezone(UTC)),
])
def test_the_feed_bytes_are_the_delivery_event_models(
    job: Job, status: DeliveryStatus, outcome: Outcome, at: datetime
) -> None:
    model = DeliveryEvent(
        id=f"{job.delivery_id}.{job.attempt}.notifier-a", source=SOURCE, type=EventType.DELIVERY_RECORDED, time=at,
        subject=job.procedure_id,
        data=DeliveryData(
            delivery_id=job.delivery_id, event_id=job.event_id, procedure_id=job.procedure_id, eori=job.eori,
            channel=job.channel, recipient=job.address, attempt=job.attempt, status=status,
            http_status=outcome.http_status, error=outcome.error, at=at,
        ),
    )
    written = delivery_event_bytes(Recorded.of(job, status, outcome, at), instance="notifier-a")
    assert written == model.to_bytes()
    assert CloudEvent[DeliveryData].model_validate_json(written) == model


def test_one_instant_written_in_two_zones_gives_each_zone_s_text() -> None:
    # Equal aware datetimes (one instant) must not share a cached text: the model writes each in its own zone.
    job, outcome = _job(), Outcome.delivered(204)
    for at in (datetime(2026, 1, 1, tzinfo=UTC), datetime(2026, 1, 1, 2, tzinfo=timezone(timedelta(hours=2)))):
        model = DeliveryEvent(
            id=f"{job.delivery_id}.{job.attempt}.n", source=SOURCE, type=EventType.DELIVERY_RECORDED, time=at,
            subject=job.procedure_id,
            data=DeliveryData(delivery_id=job.delivery_id, event_id=job.event_id, procedure_id=job.procedure_id,
                              eori=job.eori, channel=job.channel, recipient=job.address, attempt=job.attempt,
                              status=DeliveryStatus.DELIVERED, http_status=204, error=None, at=at),
        )
        recorded = Recorded.of(job, DeliveryStatus.DELIVERED, outcome, at)
        assert delivery_event_bytes(recorded, instance="n") == model.to_bytes()


@pytest.mark.parametrize("url", [
    "https://Hooks.example:8443/eo/LU1?x=1", "http://127.0.0.1:9000/hook/5", "https://h.example?x=/a",
    "https://h.example#/a", "https://u:p@h.example/a", "https://[::1]:8443/a/b", "https://h.example",
    "https://h.example:99999/a", "ftp://h.example/a", "https://h.example/a://b",
])
def test_the_origin_is_what_the_url_rules_read(url: str) -> None:
    origin = url_origin(url)
    assert origin is not None
    parts, cut = urlsplit(url), urlsplit(origin)
    assert (cut.scheme, cut.netloc) == (parts.scheme, parts.netloc)
    assert url.startswith(origin)


def test_an_address_without_an_authority_has_nourl_origin() -> None:
    assert url_origin("https:/h.example/a") is None
    assert url_origin("mailto:eo@example.lu") is None
    with pytest.raises(ValueError, match="IPv6"):  # the rules refuse it; its origin does not parse either
        urlsplit(cast(str, url_origin("https://[::1/a")))


class _Receiver:
    """Stands in for the HTTP client: answers 204 and notes where it was asked to post."""

    def __init__(self) -> None:
        self.posted: list[str] = []

    async def post(self, url: str, *, body: bytes, headers: Sequence[tuple[str, str]], timeout_s: float) -> Any:
        self.posted.append(url)
        return HttpAnswer(204)


@pytest.mark.parametrize(("allow_insecure", "allow_private"), [(False, False), (True, False), (True, True)])
def test_the_url_verdict_cached_per_origin_is_the_verdict_per_url(allow_insecure: bool, allow_private: bool) -> None:
    settings = NotifierSettings(allow_insecure_webhooks=allow_insecure, allow_private_webhooks=allow_private)
    receiver = _Receiver()
    sender = WebhookSender(settings=settings, client=cast(WebhookHttpClient, receiver))
    # Each asked twice, in an order where an accepted origin is seen before a refused URL under it and after.
    urls = [
        "https://hooks.example/eo/LU1", "https://hooks.example/eo/LU2?x=1", "https://hooks.example:99999/eo/LU3",
        "http://hooks.example/eo/LU4", "http://127.0.0.1:9000/hook/5", "http://127.0.0.1:9000/hook/6",
        "https://[::1]/a", "https://[::1/a", "ftp://hooks.example/a", "https:/hooks.example/a", "mailto:eo@example.lu",
        "https://localhost/x", "https://hooks.example#/frag",
    ]

    async def verdicts() -> list[str | None]:
        return [(await sender.send(_job(address=url))).error for url in [*urls, *reversed(urls), *urls]]

    expected = [
        webhook_url_problem(url, allow_insecure=allow_insecure, allow_private=allow_private)
        for url in [*urls, *reversed(urls), *urls]
    ]
    assert asyncio.run(verdicts()) == expected
    assert receiver.posted == [url for url, problem in zip([*urls, *reversed(urls), *urls], expected, strict=True)
                               if problem is None]
    assert any(problem is None for problem in expected) and any(problem is not None for problem in expected)


class _Claims(Dispatcher):
    """A dispatcher whose claims are answered here (no database): each answers "nothing left there"."""

    def __init__(self) -> None:
        super().__init__(settings=Settings(), sessions=cast(Any, None), senders={},
                         metrics=NotifierMetrics(CollectorRegistry()), poll_s=3600)
        self.asked: list[list[str]] = []

    async def _claim_batch_of_jobs(self, *, excluding_lanes: list[str]) -> tuple[list[Job], bool]:
        self.asked.append(sorted(excluding_lanes))
        return [], True


def _fill(dispatcher: Dispatcher, name: str, *, full: bool) -> None:
    lane = dispatcher._lane_for(name, DeliveryChannel.WEBHOOK)
    lane.queue.extend(_job() for _ in range(lane.buffer if full else 1))


def test_with_every_lane_full_the_log_is_not_walked_again_until_new_rows_are_planned() -> None:
    async def scenario() -> list[tuple[bool, list[list[str]]]]:
        dispatcher = _Claims()
        _fill(dispatcher, "busy.example:443", full=True)
        seen = []
        for _ in range(3):  # the first claim looks outside the full lane; the next ones (poll_s later) do not
            seen.append((await dispatcher._claim(), list(dispatcher.asked)))
        dispatcher.wake()  # rows planned: look again at once
        seen.append((await dispatcher._claim(), list(dispatcher.asked)))
        _fill(dispatcher, "other.example:443", full=False)  # a lane with room is served whatever the others
        seen.append((await dispatcher._claim(), list(dispatcher.asked)))
        return seen

    busy = ["busy.example:443"]
    assert asyncio.run(scenario()) == [
        (True, [busy]), (True, [busy]), (True, [busy]), (True, [busy, busy]), (True, [busy, busy, busy]),
    ]


class _WokenWhileWalking(_Claims):
    """Rows are planned (a wake) while the first walk awaits the database: they may be outside its snapshot."""

    async def _claim_batch_of_jobs(self, *, excluding_lanes: list[str]) -> tuple[list[Job], bool]:
        self.asked.append(sorted(excluding_lanes))
        if len(self.asked) == 1:
            await asyncio.sleep(0)
            self.wake()
        return [], True


def test_rows_planned_while_a_claim_walks_are_looked_for_at_once() -> None:
    async def scenario() -> tuple[list[list[str]], list[list[str]]]:
        dispatcher = _WokenWhileWalking()
        _fill(dispatcher, "busy.example:443", full=True)
        await dispatcher._claim()  # walks, is woken meanwhile, walks again
        after_first = list(dispatcher.asked)
        await dispatcher._claim()  # that second walk found nothing and no wake came: not walked again
        return after_first, list(dispatcher.asked)

    busy = ["busy.example:443"]
    assert asyncio.run(scenario()) == ([busy, busy], [busy, busy])


def test_a_lane_is_claimed_for_once_half_empty_not_topped_up_as_it_drains() -> None:
    async def scenario() -> tuple[bool, list[list[str]], bool, list[list[str]]]:
        dispatcher = _Claims()
        lane = dispatcher._lane_for("busy.example:443", DeliveryChannel.WEBHOOK)
        lane.queue.extend(_job() for _ in range(lane.buffer // 2 + 1))  # room for more, but over half full
        blocked = await dispatcher._claim()
        first = list(dispatcher.asked)
        lane.queue.popleft()  # half empty now
        return blocked, first, await dispatcher._claim(), list(dispatcher.asked)

    busy = ["busy.example:443"]
    assert asyncio.run(scenario()) == (True, [busy], False, [busy, []])


class _Instant:
    async def send(self, job: Job) -> Outcome:
        return Outcome.delivered(204)

    async def aclose(self) -> None:
        pass


def test_a_lane_run_empty_within_its_first_second_gives_the_next_one_its_host_s_pace() -> None:
    async def scenario() -> tuple[int, int]:
        dispatcher = _Claims()
        dispatcher._senders = {DeliveryChannel.WEBHOOK: _Instant()}
        lane = dispatcher._lane_for("fast.example:443", DeliveryChannel.WEBHOOK)
        floor = lane.buffer
        lane.queue.extend(_job() for _ in range(floor))
        lane.workers = 1
        dispatcher._tasks = 1
        await dispatcher._work(lane)  # the host takes them all at once; the lane ends with no work left
        assert "fast.example:443" not in dispatcher._lanes
        return floor, dispatcher._lane_for("fast.example:443", DeliveryChannel.WEBHOOK).buffer

    floor, next_buffer = asyncio.run(scenario())
    assert next_buffer > floor  # not back at the floor, as every lane of a national fan-out was


class _Refusing:
    async def send(self, job: Job) -> Outcome:
        return Outcome.failed("connection refused")

    async def aclose(self) -> None:
        pass


def test_what_a_lane_learnt_is_for_its_host_s_next_moments_not_the_next_fan_out_and_failures_teach_nothing(
) -> None:
    async def run_a_lane(dispatcher: Dispatcher, name: str) -> int:
        lane = dispatcher._lane_for(name, DeliveryChannel.WEBHOOK)
        lane.queue.extend(_job() for _ in range(lane.buffer))
        lane.workers = 1
        dispatcher._tasks = 1
        await dispatcher._work(lane)
        return lane.floor

    async def scenario() -> tuple[int, int, int]:
        dispatcher = _Claims()
        dispatcher._senders = {DeliveryChannel.WEBHOOK: _Instant()}
        floor = await run_a_lane(dispatcher, "fast.example:443")
        learnt, ended_at = dispatcher._buffers["fast.example:443"]
        assert learnt > floor
        # As if the host's next fan-out came LANE_MEMORY_S and a second later.
        dispatcher._buffers["fast.example:443"] = (learnt, ended_at - LANE_MEMORY_S - 1)
        a_fan_out_later = dispatcher._lane_for("fast.example:443", DeliveryChannel.WEBHOOK).buffer
        dispatcher._lanes.clear()
        dispatcher._senders = {DeliveryChannel.WEBHOOK: _Refusing()}
        await run_a_lane(dispatcher, "refusing.example:443")
        after_refusals = dispatcher._lane_for("refusing.example:443", DeliveryChannel.WEBHOOK).buffer
        return floor, a_fan_out_later, after_refusals

    floor, a_fan_out_later, after_refusals = asyncio.run(scenario())
    assert (a_fan_out_later, after_refusals) == (floor, floor)


class _ReadElsewhere(_Claims):
    """A claim whose walk made a lane for a host, and whose rows came back at another (readdressed meanwhile),
    then one whose read failed."""

    def __init__(self) -> None:
        super().__init__()
        self.fail = False

    async def _claim_batch_of_jobs(self, *, excluding_lanes: list[str]) -> tuple[list[Job], bool]:
        self._lane_for("old.example:443", DeliveryChannel.WEBHOOK)  # made while walking the candidates
        if self.fail:
            raise ConnectionError("the database went away")
        return [_job()], True  # its lane: hooks.example:443


def test_a_lane_made_for_rows_that_came_back_elsewhere_or_not_at_all_is_not_left_behind() -> None:
    async def scenario() -> tuple[list[str], list[str]]:
        dispatcher = _ReadElsewhere()
        dispatcher._senders = {DeliveryChannel.WEBHOOK: _Instant()}
        await dispatcher._claim()
        after_readdress = sorted(dispatcher._lanes)
        await asyncio.gather(*dispatcher._workers)
        dispatcher.fail = True
        with pytest.raises(ConnectionError):
            await dispatcher._claim()
        return after_readdress, sorted(dispatcher._lanes)

    assert asyncio.run(scenario()) == (["hooks.example:443"], [])


class _Feed:
    """The deliveries feed's producer: what each ``publish_many`` was handed."""

    def __init__(self) -> None:
        self.published: list[list[str]] = []  # the delivery ids of each call

    async def publish_many(self, messages: Sequence[tuple[str, str, bytes]]) -> None:
        self.published.append([DeliveryEvent.model_validate_json(value).data.delivery_id for _, _, value in messages])


def _recorded(*ids: str) -> list[Recorded]:
    at = datetime(2026, 12, 3, 9, 0, tzinfo=UTC)
    return [Recorded(i, "ev-1", "P-2026-0001", "LU1", DeliveryChannel.WEBHOOK, "https://hooks.example/1", 1,
                     DeliveryStatus.DELIVERED, 204, None, at) for i in ids]


async def _published(feed: _Feed, calls: int) -> list[list[str]]:
    async with asyncio.timeout(5):
        while len(feed.published) < calls:
            await asyncio.sleep(0.01)
    return feed.published


def test_while_lanes_stay_busy_each_batch_of_outcomes_reaches_the_feed_by_its_own_deadline(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A batch recorded longer than FEED_MAX_LAG_S ago is published at once, lanes busy or not, and so is the
    one queued behind it: its wait is counted from its own recording, not from the batch before it."""
    monkeypatch.setattr(dispatch, "FEED_MAX_LAG_S", 60.0)

    async def scenario() -> tuple[list[list[str]], list[list[str]]]:
        feed = _Feed()
        dispatcher = Dispatcher(settings=Settings(), sessions=cast(Any, None), senders={},
                                metrics=NotifierMetrics(CollectorRegistry()), publisher=cast(Any, feed))
        lane = dispatcher._lane_for("busy.example:443", DeliveryChannel.WEBHOOK)
        now = asyncio.get_running_loop().time()
        dispatcher._published.put_nowait((now - 62, _recorded("a1", "a2")))
        dispatcher._published.put_nowait((now - 61, _recorded("b1")))
        dispatcher._published.put_nowait((now, _recorded("c1")))  # waits while the lane is busy
        publishing = asyncio.create_task(dispatcher._publish_outcomes())
        try:
            await _published(feed, 2)
            await asyncio.sleep(0.2)
            busy = list(feed.published)
            dispatcher._drop_lane(lane)  # idle: what is queued goes at once
            return busy, await _published(feed, 3)
        finally:
            publishing.cancel()

    busy, idle = asyncio.run(scenario())
    assert busy == [["a1", "a2"], ["b1"]]
    assert idle == [["a1", "a2"], ["b1"], ["c1"]]


def test_once_the_lanes_are_idle_the_queued_batches_go_together(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(dispatch, "FEED_MAX_LAG_S", 60.0)

    async def scenario() -> list[list[str]]:
        feed = _Feed()
        dispatcher = Dispatcher(settings=Settings(), sessions=cast(Any, None), senders={},
                                metrics=NotifierMetrics(CollectorRegistry()), publisher=cast(Any, feed))
        now = asyncio.get_running_loop().time()
        for batch in (_recorded("a1"), _recorded("b1", "b2"), _recorded("c1")):
            dispatcher._published.put_nowait((now, batch))
        publishing = asyncio.create_task(dispatcher._publish_outcomes())
        try:
            published = await _published(feed, 1)
            await asyncio.wait_for(dispatcher._published.join(), 5)  # every batch taken counted as done
            return published
        finally:
            publishing.cancel()

    assert asyncio.run(scenario()) == [["a1", "b1", "b2", "c1"]]
