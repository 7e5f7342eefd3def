"""The delivery log on PostgreSQL. A large plan refreshes the statistics of the delivery log and the reach
rows (``ANALYZE``): with the tables' old statistics, PostgreSQL recorded each outcome's reach by walking every
unreached EO of the procedure (``services/notifier/planning.py``, ``Planner._refresh_statistics``); so does
the registry as it grows."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select, text

import shared.db
from services.notifier import planning
from services.notifier.app import NotifierParts
from services.notifier.domain import idempotency_key
from services.notifier.models import ReachRow
from shared.events import DeliveryChannel, Language
from tests.integration.test_notifier_delivery import (
    RECORD,
    deliveries,
    notifier_database,
    notifier_settings,
    procedure_event,
    register,
    running_notifier,
    settled,
)
from tests.support import WebhookReceiver, eventually

pytestmark = [pytest.mark.integration, pytest.mark.postgres]


@pytest.fixture(params=["postgresql"])
async def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    async with notifier_database(request, tmp_path) as url:
        yield url


async def _analyzed(parts: NotifierParts) -> set[str]:
    """The notifier's tables PostgreSQL holds statistics of (``pg_stats`` is filled by ANALYZE, at once)."""
    async with parts.sessions() as session:
        rows = await session.execute(text(
            "SELECT DISTINCT tablename FROM pg_stats WHERE tablename IN ('deliveries', 'procedure_reach')"
        ))
        return {row[0] for row in rows}


@pytest.mark.parametrize(("threshold", "analyzed"), [(3, {"deliveries", "procedure_reach"}), (4, set())])
async def test_a_plan_of_at_least_analyze_after_deliveries_refreshes_the_statistics(
    database_url: str, kafka_bootstrap: str, topic_prefix: str, monkeypatch: pytest.MonkeyPatch,
    threshold: int, analyzed: set[str],
) -> None:
    monkeypatch.setattr(planning, "ANALYZE_AFTER", threshold)
    receiver = WebhookReceiver().start()
    try:
        async with running_notifier(notifier_settings(kafka_bootstrap, topic_prefix, database_url),
                                    publish=False) as parts:
            for eori in ("LU0001", "LU0002", "LU0003"):
                await register(parts, eori, receiver.url())
            assert await _analyzed(parts) == set()  # a few rows: autovacuum has not analyzed them
            await parts.planner.on_procedure(procedure_event(), RECORD)  # 3 webhook deliveries
            assert await _analyzed(parts) == analyzed
    finally:
        receiver.stop()


async def test_the_delivery_log_keeps_half_of_each_page_free_for_its_claims(
    database_url: str, kafka_bootstrap: str, topic_prefix: str
) -> None:
    """Migration 0005: a claim (columns no index holds) is then written as a heap-only tuple, not into every index."""
    async with running_notifier(notifier_settings(kafka_bootstrap, topic_prefix, database_url),
                                publish=False) as parts, parts.sessions() as session:
        options = await session.scalar(text("SELECT reloptions FROM pg_class WHERE relname = 'deliveries'"))
    assert options == ["fillfactor=50"]


@pytest.mark.timeout(60)
async def test_a_plan_does_not_wait_for_the_tables_maintenance_lock_to_refresh_the_statistics(
    database_url: str, kafka_bootstrap: str, topic_prefix: str, monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Another session holds what ANALYZE needs (as an autovacuum against wraparound would): the plan is
    recorded, the statistics are left as they were, and the handler returns (the next event is not held)."""
    monkeypatch.setattr(planning, "ANALYZE_AFTER", 1)
    receiver = WebhookReceiver().start()
    try:
        async with running_notifier(notifier_settings(kafka_bootstrap, topic_prefix, database_url),
                                    publish=False) as parts:
            await register(parts, "LU0001", receiver.url())
            async with parts.engine.connect() as holder:
                await holder.execute(text("LOCK TABLE procedure_reach IN SHARE UPDATE EXCLUSIVE MODE"))
                await parts.planner.on_procedure(procedure_event(), RECORD)
                await holder.rollback()
            assert len(await deliveries(parts)) == 1
            assert await _analyzed(parts) == set()
    finally:
        receiver.stop()
    assert "could not refresh the statistics" in caplog.text


async def test_the_registry_is_analyzed_as_it_grows(
    database_url: str, kafka_bootstrap: str, topic_prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """After ANALYZE_AFTER EOs, then each time as many again as at the last time: the lookups of a large
    registry read into an empty table are planned with its real size (not one scan of the table per batch)."""
    monkeypatch.setattr(planning, "ANALYZE_AFTER", 2)

    async def registry_analyzed(parts: NotifierParts) -> bool:
        async with parts.sessions() as session:
            return bool(await session.scalar(text("SELECT count(*) FROM pg_stats WHERE tablename = 'eos'")))

    async with running_notifier(notifier_settings(kafka_bootstrap, topic_prefix, database_url),
                                publish=False) as parts:
        await register(parts, "LU0001", None, email="one@eo.lu")
        assert not await registry_analyzed(parts)
        await register(parts, "LU0002", None, email="two@eo.lu")
        assert await registry_analyzed(parts)


async def test_a_plan_copied_into_the_delivery_log_reaches_every_eo(
    database_url: str, kafka_bootstrap: str, topic_prefix: str, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A plan of ``COPY_MIN_ROWS`` rows or more goes by COPY (``shared.db._copied``; lowered here to 1), its
    deliveries in parts (``planning.PLAN_PART``, lowered to 2: a temporary table per part, one transaction): every
    EO's delivery and reach row recorded with the plan's values, each notice sent once, each EO reached."""
    monkeypatch.setattr(shared.db, "COPY_MIN_ROWS", 1)
    monkeypatch.setattr(planning, "PLAN_PART", 2)
    copies: list[str] = []
    real_copied = shared.db._copied

    async def copied(*args: Any, **kwargs: Any) -> str | None:
        name = await real_copied(*args, **kwargs)
        copies.append(str(name))
        return name

    monkeypatch.setattr(shared.db, "_copied", copied)
    receiver = WebhookReceiver().start()
    try:
        async with running_notifier(notifier_settings(kafka_bootstrap, topic_prefix, database_url)) as parts:
            for eori, language in (("LU0001", Language.FR), ("LU0002", Language.DE), ("LU0003", Language.EN)):
                await register(parts, eori, receiver.url(f"/{eori}"), language)
            event = procedure_event()
            await parts.planner.on_procedure(event, RECORD)
            assert copies == ["luccs_copy_deliveries", "luccs_copy_deliveries", "luccs_copy_procedure_reach"]
            await eventually(lambda: settled(parts), what="three deliveries settled")
            rows = await deliveries(parts)
            async with parts.sessions() as session:
                reach = (await session.execute(select(ReachRow.eori, ReachRow.reached_channel)
                                               .order_by(ReachRow.eori))).all()
        assert [(r.eori, r.status, r.attempts, r.event_id, r.idempotency_key) for r in rows] == [
            (eori, "delivered", 1, event.id, idempotency_key(event.id, eori, DeliveryChannel.WEBHOOK))
            for eori in ("LU0001", "LU0002", "LU0003")
        ]
        assert [tuple(row) for row in reach] == [(eori, "webhook") for eori in ("LU0001", "LU0002", "LU0003")]
        assert sorted(hook.path for hook in receiver.received) == ["/LU0001", "/LU0002", "/LU0003"]
    finally:
        receiver.stop()
