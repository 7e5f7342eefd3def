"""A fan-out planned in chunks committed as they go, on real SQLite and PostgreSQL databases.

A planner stopped after chunk k (its ``on_chunk`` raises once chunk k is committed: nothing after that point is
written, as when the process is SIGKILLed there) leaves no planned-event row, so the Kafka record is consumed
again; the next run finishes the plan with every EO planned once and none missed, and a record consumed once
more after that plans nothing. Meanwhile the dispatcher sends what is committed, the reach rows are in place
before any outcome of their deliveries, and the reach endpoint counts every concerned EO.
"""

from __future__ import annotations

import contextlib
from collections import Counter
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from prometheus_client import CollectorRegistry
from sqlalchemy import select

from services.notifier.api import router
from services.notifier.app import NotifierParts, build_notifier
from services.notifier.domain import NO_ADDRESS, idempotency_key
from services.notifier.migrate import upgrade
from services.notifier.models import NoticeRow, PlannedEventRow, ReachRow
from services.notifier.notices import Contacts, NoticeTexts
from services.notifier.planning import NoticeDesk, Planner
from shared.config import Settings
from shared.events import CloudEvent, DeliveryChannel, ProcedureData
from tests.integration.test_notifier_delivery import (
    RECORD,
    deliveries,
    notifier_database,
    notifier_settings,
    procedure_event,
    register,
    running_notifier,
)
from tests.support import WebhookReceiver, eventually

pytestmark = pytest.mark.integration

REACHABLE = 21  # EOs with a webhook; one more has no address
FIRST, CHUNK = 3, 5  # 21 deliveries: chunks of 3, 5, 5, 5, 3


class Stopped(Exception):
    """Where the test cuts the planner off, as a crash would."""


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
async def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    async with notifier_database(request, tmp_path) as url:
        yield url


def _eori(n: int) -> str:
    return f"LU{n:012d}"


def _planner(
    parts: NotifierParts, settings: Settings, *, stop_after: int | None = None,
    on_chunk: Callable[[], None] = lambda: None, on_planned: Callable[[], None] = lambda: None,
) -> tuple[Planner, list[int]]:
    """A planner of small chunks on the notifier's database; with ``stop_after``, cut off once that many chunks
    are committed. Returns it and the list of chunks it has committed (grows as it plans)."""
    committed: list[int] = []

    def chunk_done() -> None:
        committed.append(len(committed) + 1)
        on_chunk()
        if stop_after is not None and len(committed) >= stop_after:
            raise Stopped(f"stopped after chunk {len(committed)}")

    texts = NoticeTexts(contacts=Contacts(servicedesk=None, bureau=None))
    desk = NoticeDesk(settings=settings.notifier, sessions=parts.sessions, texts=texts,
                      metrics=parts.metrics)
    planner = Planner(desk, chunk=CHUNK, first_chunk=FIRST, on_chunk=chunk_done, on_planned=on_planned)
    return planner, committed


@contextlib.asynccontextmanager
async def _planning_only(settings: Settings) -> AsyncIterator[NotifierParts]:
    """The notifier's parts on a migrated database, its dispatcher and reach keeper not running."""
    parts = build_notifier(settings, registry=CollectorRegistry())
    try:
        await upgrade(parts.engine)
        yield parts
    finally:
        await parts.aclose()


async def _register_eos(parts: NotifierParts, receiver: WebhookReceiver) -> None:
    for n in range(REACHABLE):
        await register(parts, _eori(n), receiver.url(f"/hook/{_eori(n)}"))
    await register(parts, _eori(REACHABLE), None)  # concerned, but with neither webhook nor e-mail


async def _planned_row(parts: NotifierParts, event_id: str) -> PlannedEventRow | None:
    async with parts.sessions() as session:
        return await session.get(PlannedEventRow, event_id)


async def _reach(parts: NotifierParts, procedure_id: str) -> dict[str, Any]:
    app = FastAPI()
    app.state.sessions = parts.sessions
    app.include_router(router)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://notifier") as client:
        response = await client.get(f"/api/v1/procedures/{procedure_id}/reach")
    assert response.status_code == 200, response.text
    return dict(response.json())


async def _reach_rows(parts: NotifierParts, procedure_id: str) -> list[ReachRow]:
    async with parts.sessions() as session:
        return list((await session.scalars(select(ReachRow).where(ReachRow.procedure_id == procedure_id))).all())


def _expected_keys(event: CloudEvent[ProcedureData]) -> set[str]:
    return {idempotency_key(event.id, _eori(n), DeliveryChannel.WEBHOOK) for n in range(REACHABLE)}


@pytest.mark.parametrize("stop_after", [1, 2, 4])
async def test_a_plan_stopped_after_chunk_k_is_finished_by_the_next_run_each_eo_once(
    database_url: str, kafka_bootstrap: str, topic_prefix: str, stop_after: int
) -> None:
    receiver = WebhookReceiver()  # not started: nothing is sent, no dispatcher runs here
    settings = notifier_settings(kafka_bootstrap, topic_prefix, database_url)
    event = procedure_event()
    async with _planning_only(settings) as parts:
        await _register_eos(parts, receiver)
        cut, _ = _planner(parts, settings, stop_after=stop_after)
        with pytest.raises(Stopped):
            await cut.on_procedure(event, RECORD)

        partial = [r for r in await deliveries(parts) if r.event_id == event.id]
        assert len(partial) == FIRST + CHUNK * (stop_after - 1)
        assert await _planned_row(parts, event.id) is None  # not marked planned: the record is consumed again
        # Every concerned EO is recorded from the first chunk on, so each delivery's EO has its reach row.
        reach = {row.eori: row for row in await _reach_rows(parts, event.data.procedure_id)}
        assert set(reach) == {_eori(n) for n in range(REACHABLE + 1)}
        assert reach[_eori(REACHABLE)].last_error == NO_ADDRESS
        # The late joiners' sweep leaves a fan-out being planned to its planner.
        assert await parts.reach.plan_late_joiners() == 0
        assert len([r for r in await deliveries(parts) if r.event_id == event.id]) == len(partial)

        planned_wholly: list[bool] = []
        resumed, chunks = _planner(parts, settings, on_planned=lambda: planned_wholly.append(True))
        await resumed.on_procedure(event, RECORD)  # the record consumed again: the plan is finished
        rows = [r for r in await deliveries(parts) if r.event_id == event.id]
        assert Counter(r.idempotency_key for r in rows) == Counter(_expected_keys(event))  # each EO once, none missed
        before = {r.id: r.idempotency_key for r in partial}
        assert {r.id: r.idempotency_key for r in rows if r.id in before} == before  # the first run's rows kept
        assert len(chunks) == len(range(0, REACHABLE - len(partial) - FIRST, CHUNK))
        planned = await _planned_row(parts, event.id)
        assert planned is not None and planned.deliveries == REACHABLE and planned_wholly == [True]
        async with parts.sessions() as session:
            notices = (await session.scalars(select(NoticeRow).where(NoticeRow.event_id == event.id))).all()
        assert len(notices) == 1  # rendered once, reused by the resumed run

        again, again_chunks = _planner(parts, settings, on_planned=lambda: planned_wholly.append(True))
        await again.on_procedure(event, RECORD)  # consumed once more after the plan: nothing planned
        assert len(await deliveries(parts)) == REACHABLE and again_chunks == [] and planned_wholly == [True]


async def test_the_first_chunks_are_sent_while_the_plan_is_cut_off_and_reach_stays_true(
    database_url: str, kafka_bootstrap: str, topic_prefix: str
) -> None:
    receiver = WebhookReceiver().start()
    settings = notifier_settings(kafka_bootstrap, topic_prefix, database_url)
    event = procedure_event()
    procedure_id = event.data.procedure_id
    try:
        async with running_notifier(settings, publish=False) as parts:
            await _register_eos(parts, receiver)
            cut, _ = _planner(parts, settings, stop_after=2, on_chunk=parts.dispatcher.wake)
            with pytest.raises(Stopped):
                await cut.on_procedure(event, RECORD)
            sent_early = FIRST + CHUNK

            async def early_ones_recorded() -> bool:
                rows = await deliveries(parts)
                return len(rows) == sent_early and all(r.status == "delivered" for r in rows)

            await eventually(early_ones_recorded, what="the committed chunks delivered and recorded")
            # The plan is cut off: every concerned EO counted, those sent reached, the others not (yet).
            reach = await _reach(parts, procedure_id)
            assert (reach["concerned"], reach["reached"]) == (REACHABLE + 1, sent_early)
            assert reach["opened_at"] is not None
            assert len(reach["unreached"]) == REACHABLE + 1 - sent_early
            assert reach["reached_all_s"] is None

            resumed, _ = _planner(parts, settings, on_chunk=parts.dispatcher.wake, on_planned=parts.dispatcher.wake)
            await resumed.on_procedure(event, RECORD)

            async def fan_out_settled() -> PlannedEventRow | None:
                planned = await _planned_row(parts, event.id)
                return planned if planned is not None and planned.settled_at is not None else None

            await eventually(fan_out_settled, what="the fan-out settled")
            reach = await _reach(parts, procedure_id)
            rows = await deliveries(parts)
    finally:
        receiver.stop()
    assert (reach["concerned"], reach["reached"]) == (REACHABLE + 1, REACHABLE)
    assert [u["eori"] for u in reach["unreached"]] == [_eori(REACHABLE)]
    assert all(r.status == "delivered" for r in rows) and len(rows) == REACHABLE
    received = Counter(w.path for w in receiver.received)
    assert received == Counter(f"/hook/{_eori(n)}" for n in range(REACHABLE))  # each EO exactly once


async def test_a_resumed_plan_with_nothing_left_to_record_is_settled_when_its_deliveries_are(
    database_url: str, kafka_bootstrap: str, topic_prefix: str
) -> None:
    receiver = WebhookReceiver().start()
    settings = notifier_settings(kafka_bootstrap, topic_prefix, database_url)
    event = procedure_event()
    try:
        async with running_notifier(settings, publish=False) as parts:
            await _register_eos(parts, receiver)
            cut, _ = _planner(parts, settings, stop_after=1, on_chunk=parts.dispatcher.wake)
            with pytest.raises(Stopped):
                await cut.on_procedure(event, RECORD)

            async def first_chunk_delivered() -> bool:
                rows = await deliveries(parts)
                return len(rows) == FIRST and all(r.status == "delivered" for r in rows)

            await eventually(first_chunk_delivered, what="the first chunk delivered")
            # Meanwhile every EO not yet planned loses its webhook: the resumed plan records no delivery.
            for n in range(FIRST, REACHABLE + 1):
                await register(parts, _eori(n), None)
            resumed, _ = _planner(parts, settings)
            await resumed.on_procedure(event, RECORD)
            planned = await _planned_row(parts, event.id)
    finally:
        receiver.stop()
    # No outcome is left to record, so no outcome batch would mark it: the planner did.
    assert planned is not None and planned.deliveries == FIRST and planned.settled_at is not None
