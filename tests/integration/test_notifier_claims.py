"""A claim builds a job for every row it claimed, whatever its cache of notices held: a full cache is cleared
before the notices missing from it are loaded (a row whose notice was cached and then cleared away failed the
claim and stayed held, its lease renewed for ever, sent by no notifier)."""

from __future__ import annotations

import gc
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry
from sqlalchemy import insert
from sqlalchemy.ext.asyncio import AsyncSession

from services.notifier.dispatch import _D, Dispatcher, _Notice
from services.notifier.domain import Audience
from services.notifier.jobs import Job, Outcome
from services.notifier.metrics import NotifierMetrics
from services.notifier.migrate import upgrade
from services.notifier.models import NoticeRow
from shared.config import NotifierSettings, Settings
from shared.db import make_engine, session_factory
from shared.events import DeliveryChannel, DeliveryStatus, EventType, Language
from tests.integration.test_notifier_delivery import notifier_database

pytestmark = pytest.mark.integration


class _Never:
    async def send(self, job: Job) -> Outcome:
        raise AssertionError("not sent in this test")

    async def aclose(self) -> None:
        pass


async def _notice(session: AsyncSession, **values: Any) -> int:
    """A rendered notice of event ``e`` for EOs in French (``values`` override), its id."""
    row = {"event_id": "e", "audience": "eo", "language": "fr", "variant": "", "subject": "s", "message": "m",
           "webhook_body": b"{}", **values}
    return int((await session.execute(insert(NoticeRow).values(**row).returning(NoticeRow.id))).scalar_one())


async def _delivery(session: AsyncSession, n: int, notice_id: int, at: datetime, **values: Any) -> None:
    """Delivery ``delivery-N`` of event ``e``: an EO webhook due at ``at`` (``values`` override)."""
    await session.execute(insert(_D).values(**{
        "id": f"delivery-{n}", "event_id": "e", "event_type": EventType.PROCEDURE_OPENED, "procedure_id": "P",
        "notice_id": notice_id, "audience": "eo", "recipient_key": f"k{n}", "eori": f"LU{n}", "channel": "webhook",
        "recipient": f"https://hooks.example/{n}", "lane": "hooks.example:443", "idempotency_key": f"i{n}",
        "status": "pending", "attempts": 0, "next_attempt_at": at, "created_at": at, "updated_at": at, **values,
    }))


async def test_a_full_notice_cache_is_cleared_before_the_missing_notices_are_loaded(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'notifier.db'}")
    try:
        await upgrade(engine)
        sessions = session_factory(engine)
        now = datetime.now(UTC)
        async with sessions.begin() as session:
            notices = [await _notice(session, language=language) for language in ("fr", "de")]
            for n, notice_id in enumerate(notices):
                await _delivery(session, n, notice_id, now, next_attempt_at=now - timedelta(seconds=2 - n))
        dispatcher = Dispatcher(settings=Settings(notifier=NotifierSettings()), sessions=sessions,
                                senders={DeliveryChannel.WEBHOOK: _Never()},
                                metrics=NotifierMetrics(CollectorRegistry()))
        # A full cache holding the second row's notice but not the first's.
        dispatcher._notices = {-i: _Notice(Language.EN, "", "", None) for i in range(1, 10_002)}
        dispatcher._notices[notices[1]] = _Notice(Language.DE, "s", "m", b"{}")
        jobs, _ = await dispatcher._claim_batch_of_jobs(excluding_lanes=[])
    finally:
        await engine.dispose()
    assert [(job.delivery_id, job.language) for job in jobs] == [("delivery-0", Language.FR),
                                                                  ("delivery-1", Language.DE)]
    assert dispatcher.in_flight == 2


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
async def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    async with notifier_database(request, tmp_path) as url:
        yield url


async def test_a_claimed_job_carries_its_rows_values_as_their_types(database_url: str) -> None:
    """The claim reads the enums and the time planned as the driver gives them and converts them itself."""
    engine = make_engine(database_url)
    planned_at = datetime(2026, 12, 2, 7, 30, 15, 250001, tzinfo=UTC)
    try:
        await upgrade(engine)
        sessions = session_factory(engine)
        async with sessions.begin() as session:
            notice_id = await _notice(session, audience="servicedesk", language="de", webhook_body=None)
            await _delivery(
                session, 0, notice_id, planned_at, event_type=EventType.PROCEDURE_CLOSED, audience="servicedesk",
                eori=None, channel="email", recipient="desk@example.lu", lane="email", status="retrying", attempts=2,
                created_at=planned_at.astimezone(timezone(timedelta(hours=2))),
            )
        dispatcher = Dispatcher(settings=Settings(notifier=NotifierSettings()), sessions=sessions,
                                senders={DeliveryChannel.WEBHOOK: _Never()},
                                metrics=NotifierMetrics(CollectorRegistry()))
        dispatcher._clock = lambda: planned_at + timedelta(seconds=1)
        jobs, _ = await dispatcher._claim_batch_of_jobs(excluding_lanes=[])
    finally:
        await engine.dispose()
    [job] = jobs
    assert job.event_type is EventType.PROCEDURE_CLOSED
    assert job.audience is Audience.SERVICEDESK
    assert job.channel is DeliveryChannel.EMAIL
    assert (job.attempt, job.language, job.eori, job.webhook_secret) == (3, Language.DE, None, None)
    assert job.created_at == planned_at and job.created_at.utcoffset() == timedelta(0)


async def test_the_outcomes_awaiting_the_feed_hold_what_it_reports_not_the_attempts(tmp_path: Path) -> None:
    """While a fan-out's lanes are busy the feed holds its outcomes (up to FEED_MAX_LAG_S after each was
    recorded): each as the values its event reports, not with the attempt's job (its lane, idempotency key,
    secret and notice), and a claim's rows share their event's, procedure's and lane's strings."""
    engine = make_engine(f"sqlite:///{tmp_path / 'notifier.db'}")
    now = datetime.now(UTC)
    try:
        await upgrade(engine)
        sessions = session_factory(engine)
        async with sessions.begin() as session:
            notice_id = await _notice(session, event_id="event-1")
            for n in range(3):
                await _delivery(session, n, notice_id, now - timedelta(seconds=1), event_id="event-1",
                                procedure_id="P-2026-0001")
        dispatcher = Dispatcher(settings=Settings(notifier=NotifierSettings()), sessions=sessions,
                                senders={DeliveryChannel.WEBHOOK: _Never()},
                                metrics=NotifierMetrics(CollectorRegistry()))
        jobs, _ = await dispatcher._claim_batch_of_jobs(excluding_lanes=[])
        outcomes = [Outcome.delivered(204), Outcome.failed("HTTP 503", http_status=503),
                    Outcome.failed("refused", permanent=True)]
        await dispatcher._record([(job, outcome, 0.01) for job, outcome in zip(jobs, outcomes, strict=True)])
        waiting = [recorded for _ in range(dispatcher._published.qsize())
                   for recorded in dispatcher._published.get_nowait()[1]]
    finally:
        await engine.dispose()
    assert len({id(job.event_id) for job in jobs}) == 1
    assert len({id(job.procedure_id) for job in jobs}) == len({id(job.lane) for job in jobs}) == 1
    assert [(r.delivery_id, r.eori, r.recipient, r.attempt, r.status, r.http_status, r.error) for r in waiting] == [
        ("delivery-0", "LU0", "https://hooks.example/0", 1, DeliveryStatus.DELIVERED, 204, None),
        ("delivery-1", "LU1", "https://hooks.example/1", 1, DeliveryStatus.RETRYING, 503, "HTTP 503"),
        ("delivery-2", "LU2", "https://hooks.example/2", 1, DeliveryStatus.DEAD, None, "refused"),
    ]
    assert {(r.event_id, r.procedure_id, r.channel) for r in waiting} == {
        ("event-1", "P-2026-0001", DeliveryChannel.WEBHOOK)}
    held = [value for recorded in waiting for value in gc.get_referents(recorded)]
    assert not [value for value in held if isinstance(value, (Job, Outcome))]
    assert not {"hooks.example:443", "i0", "i1", "i2"} & {value for value in held if isinstance(value, str)}
