"""The procedure service's command layer (services/procedure/commands.py): each typed command, what it
records (procedure, timeline, events in the outbox) and how it refuses. No servers: SQLite in a temporary
directory, no outbox task (the events stay in the outbox table, where they are read back)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from services.procedure.commands import ProcedureCommands
from services.procedure.handlers import ProcedureService
from services.procedure.migrate import upgrade
from services.procedure.models import OutboxRow
from services.procedure.queries import procedure_detail
from shared.config import Settings
from shared.db import make_engine, session_factory
from shared.errors import Conflict, Invalid, NotFound
from shared.events import (
    BroadcastAuthor,
    LocalisedText,
    MaintainedComponent,
    MaintenanceState,
    Origin,
    ProcedureState,
    Scenario,
    Scope,
)

NOW = datetime(2026, 11, 27, 8, 0, tzinfo=UTC)
TEXT = LocalisedText(fr="Le bureau répond.", en="The office answers.", de="Das Amt antwortet.")


class Commands:
    def __init__(self, commands: ProcedureCommands, sessions: async_sessionmaker[AsyncSession]) -> None:
        self.run = commands
        self.sessions = sessions

    async def event_types(self) -> list[str]:
        async with self.sessions() as session:
            rows = (await session.scalars(select(OutboxRow).order_by(OutboxRow.id))).all()
        return [json.loads(r.payload or b"{}")["type"] for r in rows]


@pytest.fixture
async def commands(tmp_path: Path) -> AsyncIterator[Commands]:
    settings = Settings(data_dir=tmp_path)
    engine = make_engine(f"sqlite:///{tmp_path / 'procedure.db'}")
    await upgrade(engine)
    sessions = session_factory(engine)
    service = ProcedureService(settings=settings, sessions=sessions, clock=lambda: NOW)
    yield Commands(ProcedureCommands(service=service, sessions=sessions, clock=lambda: NOW), sessions)
    await engine.dispose()


async def test_declare_opens_at_once_and_a_second_national_one_is_a_conflict(commands: Commands) -> None:
    opened = await commands.run.declare(scenario=Scenario.ADA_B2G_UNAVAILABLE, eori=None, reason="gateway swap",
                                        actor="operator:alice")
    assert (opened.state, opened.scope, opened.origin, opened.opened_at) == (
        ProcedureState.OPEN, Scope.NATIONAL, Origin.OPERATOR, NOW)
    assert await commands.event_types() == ["luccs.procedure.opened"]
    with pytest.raises(Conflict, match=opened.procedure_id):
        await commands.run.declare(scenario=Scenario.LUCCS_UNAVAILABLE, eori=None, reason="x", actor="operator:bob")
    timeline = (await procedure_detail(commands.sessions, opened.procedure_id)).timeline
    assert [(t.kind, t.actor) for t in timeline] == [("open", "operator:alice")]


@pytest.mark.parametrize(("scenario", "eori", "says"), [
    (Scenario.EO_B2G_UNAVAILABLE, None, "needs the eori"),
    (Scenario.ADA_B2G_UNAVAILABLE, "LU123", "national"),
])
async def test_declare_refuses_an_eori_that_does_not_fit_the_scenario(
    commands: Commands, scenario: Scenario, eori: str | None, says: str
) -> None:
    with pytest.raises(Invalid, match=says):
        await commands.run.declare(scenario=scenario, eori=eori, reason="x", actor="operator:alice")
    assert await commands.event_types() == []


async def test_confirm_and_close_find_the_procedure_and_fit_its_state(commands: Commands) -> None:
    with pytest.raises(NotFound, match="nope"):
        await commands.run.close(procedure_id="nope", reason="x", actor="operator:alice")
    opened = await commands.run.declare(scenario=Scenario.EO_B2G_UNAVAILABLE, eori="LU123", reason="EO phoned",
                                        actor="operator:alice")
    with pytest.raises(Conflict):
        await commands.run.confirm(procedure_id=opened.procedure_id, reason="x", actor="operator:alice")
    closed = await commands.run.close(procedure_id=opened.procedure_id, reason="EO back", actor="operator:alice")
    assert (closed.state, closed.closed_at, closed.eori) == (ProcedureState.CLOSED, NOW, "LU123")
    with pytest.raises(Conflict):
        await commands.run.close(procedure_id=opened.procedure_id, reason="again", actor="operator:alice")
    assert await commands.event_types() == ["luccs.procedure.opened", "luccs.procedure.closed"]


async def test_notes_and_broadcasts_go_on_the_timeline_of_an_open_procedure_only(commands: Commands) -> None:
    with pytest.raises(NotFound):
        await commands.run.note(procedure_id="nope", text="x", actor="operator:alice")
    opened = await commands.run.declare(scenario=Scenario.LUCCS_UNAVAILABLE, eori=None, reason="both down",
                                        actor="operator:alice")
    await commands.run.note(procedure_id=opened.procedure_id, text="Bureau informed", actor="operator:alice")
    sent = await commands.run.broadcast(procedure_id=opened.procedure_id, text=TEXT, author=BroadcastAuthor.BUREAU,
                                        actor="bureau:carla")
    assert (sent.procedure_id, sent.scope, sent.eori, sent.author) == (
        opened.procedure_id, "national", None, BroadcastAuthor.BUREAU)
    await commands.run.close(procedure_id=opened.procedure_id, reason="back", actor="operator:alice")
    with pytest.raises(Conflict):
        await commands.run.broadcast(procedure_id=opened.procedure_id, text=TEXT, author=BroadcastAuthor.BUREAU,
                                     actor="bureau:carla")
    with pytest.raises(NotFound):
        await commands.run.broadcast(procedure_id="nope", text=TEXT, author=BroadcastAuthor.BUREAU, actor="x")
    timeline = (await procedure_detail(commands.sessions, opened.procedure_id)).timeline
    assert [t.kind for t in timeline] == ["open", "note", "broadcast", "close"]
    assert "luccs.procedure.broadcast" in await commands.event_types()


async def test_an_eo_report_opens_and_closes_its_own_procedure_and_a_repeat_changes_nothing(
    commands: Commands,
) -> None:
    down = await commands.run.eo_report(eori="LU123", down=True, detail="gateway replaced", actor="eo:LU123")
    assert down.result == "open" and down.procedure is not None
    assert (down.procedure.scope, down.procedure.eori, down.procedure.origin, down.procedure.auto_close) == (
        Scope.EO, "LU123", Origin.EO_REPORT, False)
    again = await commands.run.eo_report(eori="LU123", down=True, detail=None, actor="eo:LU123")
    assert (again.result, again.detail, again.procedure) == ("no change", "already open", None)
    up = await commands.run.eo_report(eori="LU123", down=False, detail=None, actor="eo:LU123")
    assert up.result == "close" and up.procedure is not None and up.procedure.state == ProcedureState.CLOSED
    assert (await commands.run.eo_report(eori="LU123", down=False, detail=None, actor="eo:LU123")).result == (
        "no change")


async def test_maintenance_windows_are_scheduled_changed_and_cancelled_once(commands: Commands) -> None:
    starts, ends = NOW + timedelta(days=2), NOW + timedelta(days=2, hours=2)
    with pytest.raises(Invalid, match="after starts_at"):
        await commands.run.schedule_maintenance(component=MaintainedComponent.NTP, starts_at=ends, ends_at=starts,
                                                reason="upgrade", message=None)
    window = await commands.run.schedule_maintenance(component=MaintainedComponent.NTP, starts_at=starts,
                                                     ends_at=ends, reason="upgrade", message=None)
    assert window.state == MaintenanceState.SCHEDULED
    longer = await commands.run.change_maintenance(maintenance_id=window.maintenance_id, starts_at=None,
                                                   ends_at=ends + timedelta(hours=1), reason=None, message=None)
    assert longer.ends_at == ends + timedelta(hours=1)
    with pytest.raises(NotFound):
        await commands.run.change_maintenance(maintenance_id="nope", starts_at=None, ends_at=None, reason=None,
                                              message=None)
    cancelled = await commands.run.cancel_maintenance(maintenance_id=window.maintenance_id, reason="postponed")
    assert cancelled.state == MaintenanceState.CANCELLED
    with pytest.raises(Conflict):
        await commands.run.cancel_maintenance(maintenance_id=window.maintenance_id, reason="again")
    assert await commands.event_types() == [
        "luccs.maintenance.scheduled", "luccs.maintenance.changed", "luccs.maintenance.cancelled"]
