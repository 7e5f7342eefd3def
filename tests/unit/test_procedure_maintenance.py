"""Maintenance windows, pure rules: reminders, start and end, masking, overrun, edits."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from services.procedure import domain
from services.procedure.domain import ActiveProcedure, ComponentView
from services.procedure.maintenance import (
    StepKind,
    Window,
    edit_refusal,
    masked_views,
    next_instant,
    overran,
    planned_advisory,
    planned_scenario,
    window_steps,
)
from shared.events import (
    AdvisoryKind,
    Component,
    ComponentState,
    MaintainedComponent,
    MaintenanceState,
    Origin,
    ProcedureState,
    Scenario,
    Scope,
)

T0 = datetime(2026, 12, 5, 20, 0, tzinfo=UTC)
LEADS = [172800, 3600]
UP, DOWN = ComponentState.UP, ComponentState.DOWN


def _window(state: MaintenanceState = MaintenanceState.SCHEDULED, component: MaintainedComponent =
            MaintainedComponent.ADA_B2G, sent: frozenset[int] = frozenset()) -> Window:
    return Window("m1", component, T0, T0 + timedelta(hours=2), state, sent)


def _views(ada: ComponentState, ntp: ComponentState) -> dict[Component, ComponentView]:
    return {Component.ADA_B2G: ComponentView(Component.ADA_B2G, ada, ()),
            Component.NTP: ComponentView(Component.NTP, ntp, ())}


def test_reminders_go_out_at_each_lead_time_once() -> None:
    assert window_steps([_window()], now=T0 - timedelta(days=3), reminder_leads_s=LEADS) == []
    [two_days] = window_steps([_window()], now=T0 - timedelta(hours=47), reminder_leads_s=LEADS)
    assert (two_days.kind, two_days.lead_s, two_days.window.reminders_sent) == (StepKind.REMIND, 172800,
                                                                                 frozenset({172800}))
    assert window_steps([two_days.window], now=T0 - timedelta(hours=2), reminder_leads_s=LEADS) == []
    [hour] = window_steps([two_days.window], now=T0 - timedelta(minutes=59), reminder_leads_s=LEADS)
    assert hour.lead_s == 3600


def test_a_window_a_few_seconds_ahead_gets_one_reminder_not_one_per_lead_time() -> None:
    [step] = window_steps([_window()], now=T0 - timedelta(seconds=3), reminder_leads_s=LEADS)
    assert (step.kind, step.lead_s, step.window.reminders_sent) == (StepKind.REMIND, 3600, frozenset(LEADS))
    assert window_steps([step.window], now=T0 - timedelta(seconds=1), reminder_leads_s=LEADS) == []


def test_the_window_starts_then_ends() -> None:
    [start] = window_steps([_window()], now=T0, reminder_leads_s=LEADS)
    assert (start.kind, start.window.state) == (StepKind.START, MaintenanceState.ACTIVE)
    assert window_steps([start.window], now=T0 + timedelta(hours=1), reminder_leads_s=LEADS) == []
    [end] = window_steps([start.window], now=T0 + timedelta(hours=2), reminder_leads_s=LEADS)
    assert (end.kind, end.window.state) == (StepKind.END, MaintenanceState.DONE)
    for state in (MaintenanceState.DONE, MaintenanceState.CANCELLED):
        assert window_steps([_window(state)], now=T0, reminder_leads_s=LEADS) == []


def test_the_next_instant_is_the_next_reminder_start_or_end() -> None:
    assert next_instant([_window()], reminder_leads_s=LEADS) == T0 - timedelta(seconds=172800)
    assert next_instant([_window(sent=frozenset(LEADS))], reminder_leads_s=LEADS) == T0
    assert next_instant([_window(MaintenanceState.ACTIVE)], reminder_leads_s=LEADS) == T0 + timedelta(hours=2)
    assert next_instant([], reminder_leads_s=LEADS) is None


def test_scenarios_of_the_windows() -> None:
    assert planned_scenario(MaintainedComponent.ADA_B2G) == Scenario.ADA_B2G_UNAVAILABLE
    assert planned_scenario(MaintainedComponent.LUCCS) == Scenario.LUCCS_UNAVAILABLE
    assert planned_scenario(MaintainedComponent.NTP) is None  # NTP alone is no fallback scenario


def _planned(scenario: Scenario = Scenario.ADA_B2G_UNAVAILABLE) -> ActiveProcedure:
    return ActiveProcedure(procedure_id="p", scenario=scenario, scope=Scope.NATIONAL, eori=None,
                           state=ProcedureState.OPEN, origin=Origin.PLANNED, auto_close=True)


def _decide(active: list[ActiveProcedure], views: dict[Component, ComponentView]) -> list[domain.Decision]:
    return domain.decide(active=active, national=views, eos={}, confirm_mode=False)


def test_during_an_ada_window_probes_change_nothing_but_ntp_failing_gives_scenario_3() -> None:
    active = masked_views(_views(UP, UP), [_window(MaintenanceState.ACTIVE)])
    assert active[Component.ADA_B2G].state == DOWN
    assert _decide([_planned()], active) == []  # ADA back early: not closed before the end
    assert _decide([_planned()], masked_views(_views(DOWN, UP), [_window(MaintenanceState.ACTIVE)])) == []
    [update] = _decide([_planned()], masked_views(_views(DOWN, DOWN), [_window(MaintenanceState.ACTIVE)]))
    assert (update.action, update.scenario) == (domain.Action.UPDATE, Scenario.LUCCS_UNAVAILABLE)


def test_after_the_window_an_up_component_closes_the_planned_procedure() -> None:
    done = _window(MaintenanceState.DONE)
    [close] = _decide([_planned()], masked_views(_views(UP, UP), [done]))
    assert close.action == domain.Action.CLOSE
    assert not overran(done, _views(UP, UP))
    assert overran(done, _views(DOWN, UP))
    assert not overran(done, _views(ComponentState.UNKNOWN, UP))


def test_an_ntp_window_raises_no_ntp_advisory() -> None:
    ntp = _window(MaintenanceState.ACTIVE, MaintainedComponent.NTP)
    assert planned_advisory(AdvisoryKind.NTP_UNAVAILABLE, [ntp])
    assert not planned_advisory(AdvisoryKind.MONITORING_BLIND, [ntp])
    assert not planned_advisory(AdvisoryKind.NTP_UNAVAILABLE, [_window(MaintenanceState.ACTIVE)])
    assert not planned_advisory(AdvisoryKind.NTP_UNAVAILABLE, [_window(MaintenanceState.SCHEDULED,
                                                                       MaintainedComponent.NTP)])


def test_edits() -> None:
    now = T0 - timedelta(hours=1)
    assert edit_refusal(_window(), starts_at=T0 + timedelta(hours=1), ends_at=None, now=now) is None
    assert "after" in (edit_refusal(_window(), starts_at=T0 + timedelta(hours=3), ends_at=None, now=now) or "")
    active = _window(MaintenanceState.ACTIVE)
    assert edit_refusal(active, starts_at=None, ends_at=T0 + timedelta(hours=5), now=T0) is None
    assert "started" in (edit_refusal(active, starts_at=T0 + timedelta(minutes=5), ends_at=None, now=T0) or "")
    assert "done" in (edit_refusal(_window(MaintenanceState.DONE), starts_at=None, ends_at=None, now=T0) or "")
