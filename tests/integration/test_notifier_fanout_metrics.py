"""luccs_fanout_deliveries: one series per status for each active fan-out, none for settled, closed ones."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from services.notifier.fanout_metrics import FanoutMetrics
from services.notifier.migrate import upgrade
from services.notifier.models import DeliveryRow, KnownProcedureRow, NoticeRow
from shared.db import make_engine, session_factory

pytestmark = pytest.mark.integration

NOW = datetime(2026, 3, 2, 12, tzinfo=UTC)


def _delivery(procedure_id: str, status: str, notice_id: int) -> DeliveryRow:
    key = uuid.uuid4().hex
    return DeliveryRow(
        id=str(uuid.uuid4()), event_id=f"e-{procedure_id}", event_type="luccs.procedure.opened",
        procedure_id=procedure_id, notice_id=notice_id, audience="eo", recipient_key=key, eori=None,
        channel="webhook", recipient="https://eo.example/hook", lane="eo.example", idempotency_key=key,
        status=status, attempts=1, created_at=NOW, updated_at=NOW,
    )


async def test_active_fanouts_by_status(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'notifier.db'}")
    await upgrade(engine)
    sessions = session_factory(engine)
    async with sessions.begin() as session:
        notice = NoticeRow(event_id="e", audience="eo", language="en", variant="", subject="s", message="m")
        session.add(notice)
        await session.flush()
        for procedure_id, state in (("open-1", "open"), ("closed-settled", "closed"), ("closed-busy", "closed")):
            session.add(KnownProcedureRow(procedure_id=procedure_id, scope="national", eori=None,
                                          scenario="ADA_B2G_UNAVAILABLE", state=state, event_time=NOW))
        for procedure_id, statuses in (
            ("open-1", ["delivered", "delivered", "dead", "retrying", "pending"]),
            ("closed-settled", ["delivered", "dead"]),  # over: not shown
            ("closed-busy", ["delivered", "retrying"]),  # closing notices still on their way
            ("advisory-1", ["pending"]),  # an advisory notice, not a procedure
        ):
            session.add_all(_delivery(procedure_id, status, notice.id) for status in statuses)
    registry = CollectorRegistry()
    metrics = FanoutMetrics(registry=registry, sessions=sessions)
    await metrics.refresh()
    values = {
        (s.labels["procedure_id"], s.labels["status"]): s.value
        for family in text_string_to_metric_families(generate_latest(registry).decode()) for s in family.samples
    }
    assert values == {
        ("open-1", "pending"): 1, ("open-1", "retrying"): 1, ("open-1", "delivered"): 2, ("open-1", "dead"): 1,
        ("closed-busy", "pending"): 0, ("closed-busy", "retrying"): 1, ("closed-busy", "delivered"): 1,
        ("closed-busy", "dead"): 0,
    }
    await engine.dispose()
