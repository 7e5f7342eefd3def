"""Behaviour tests of the whole scenario engine (services/procedure/domain.py).

``decide`` (national and scenario 1 together, auto and confirm mode, every origin), the commands of people
(``eo_report``, ``declare``, ``confirm``, ``close``), the Servicedesk advisories, the configurable quorum of
``component_views`` / ``eo_views``, and a stateful model run of all of it against a simulated store.
Product section 3 is the source of every expectation here.
"""

from __future__ import annotations

import itertools
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule, run_state_machine_as_test

from services.procedure.domain import (
    Action,
    ActiveProcedure,
    AdvisoryChange,
    ComponentView,
    Decision,
    Observation,
    Rejected,
    close,
    component_views,
    confirm,
    decide,
    decide_advisories,
    declare,
    eo_report,
    eo_views,
)
from shared.events import AdvisoryKind, Component, ComponentState, Origin, ProcedureState, Scenario, Scope

UP = ComponentState.UP
DOWN = ComponentState.DOWN
UNKNOWN = ComponentState.UNKNOWN
ADA = Component.ADA_B2G
NTP = Component.NTP
EO_B2G = Component.EO_B2G
S1 = Scenario.EO_B2G_UNAVAILABLE
S2 = Scenario.ADA_B2G_UNAVAILABLE
S3 = Scenario.LUCCS_UNAVAILABLE
OPEN = ProcedureState.OPEN
PROPOSED = ProcedureState.PROPOSED
NTP_ADVISORY = AdvisoryKind.NTP_UNAVAILABLE
BLIND = AdvisoryKind.MONITORING_BLIND

EORI_A = "LU00000001"
EORI_B = "LU00000002"
EORI_C = "LU00000003"

NOW = datetime(2024, 3, 1, 12, 0, tzinfo=UTC)
STALE_AFTER_S = 60.0


# --- helpers -------------------------------------------------------------------------------------------


def nat(ada: ComponentState, ntp: ComponentState) -> dict[Component, ComponentView]:
    return {ADA: ComponentView(ADA, ada, ()), NTP: ComponentView(NTP, ntp, ())}


def eo_view(state: ComponentState) -> ComponentView:
    return ComponentView(EO_B2G, state, ())


def national_proc(
    pid: str,
    scenario: Scenario,
    *,
    state: ProcedureState = OPEN,
    origin: Origin = Origin.DETECTED,
    auto_close: bool = True,
) -> ActiveProcedure:
    return ActiveProcedure(pid, scenario, Scope.NATIONAL, None, state, origin, auto_close)


def eo_proc(
    pid: str,
    eori: str,
    *,
    state: ProcedureState = OPEN,
    origin: Origin = Origin.DETECTED,
    auto_close: bool = True,
) -> ActiveProcedure:
    return ActiveProcedure(pid, S1, Scope.EO, eori, state, origin, auto_close)


def only(decisions: list[Decision]) -> Decision:
    assert len(decisions) == 1, decisions
    return decisions[0]


def of_scope(decisions: list[Decision], scope: Scope) -> list[Decision]:
    return [d for d in decisions if d.scope == scope]


ALL_STATES = (UP, DOWN, UNKNOWN)

# Origins of an existing procedure: (origin, auto_close, do the probes move it?)
ORIGINS = {
    "detected": (Origin.DETECTED, True, True),
    "operator-manual": (Origin.OPERATOR, False, False),
    "operator-auto-close": (Origin.OPERATOR, True, True),
}
# The existing procedures worth testing: only detection proposes; operators declare open procedures.
PROCEDURE_KINDS = [(OPEN, name) for name in ORIGINS] + [(PROPOSED, "detected")]


# --- decide: the national procedure --------------------------------------------------------------------

# No national procedure yet: (ada, ntp) -> the scenario to open, or None. Written out from product section 3:
# only the ADA side opens; NTP-only is no scenario; anything unknown that matters decides nothing.
NO_PROCEDURE_TABLE: list[tuple[ComponentState, ComponentState, Scenario | None]] = [
    (UP, UP, None),
    (UP, DOWN, None),  # NTP-only outage: advisory, not a fallback
    (UP, UNKNOWN, None),
    (DOWN, UP, S2),
    (DOWN, DOWN, S3),
    (DOWN, UNKNOWN, None),  # 2 or 3? nobody knows: wait
    (UNKNOWN, UP, None),
    (UNKNOWN, DOWN, None),
    (UNKNOWN, UNKNOWN, None),
]

# An open national procedure in scenario ``current``: (ada, ntp, current) -> ("close" | "update" | None, scenario).
EXISTING_TABLE: list[tuple[ComponentState, ComponentState, Scenario, str | None, Scenario | None]] = [
    # scenario 2
    (UP, UP, S2, "close", S2),
    (UP, DOWN, S2, "close", S2),  # B2G back; NTP failing alone is only an advisory
    (UP, UNKNOWN, S2, "close", S2),  # B2G back is known: whatever NTP does, no fallback scenario applies
    (DOWN, UP, S2, None, None),
    (DOWN, DOWN, S2, "update", S3),  # 2 -> 3
    (DOWN, UNKNOWN, S2, None, None),
    (UNKNOWN, UP, S2, None, None),
    (UNKNOWN, DOWN, S2, None, None),
    (UNKNOWN, UNKNOWN, S2, None, None),
    # scenario 3
    (UP, UP, S3, "close", S3),  # both recover together
    (UP, DOWN, S3, "close", S3),  # B2G back, NTP still down -> close
    (UP, UNKNOWN, S3, "close", S3),
    (DOWN, UP, S3, "update", S2),  # 3 -> 2
    (DOWN, DOWN, S3, None, None),
    (DOWN, UNKNOWN, S3, None, None),
    (UNKNOWN, UP, S3, None, None),
    (UNKNOWN, DOWN, S3, None, None),
    (UNKNOWN, UNKNOWN, S3, None, None),
]


@pytest.mark.parametrize("confirm_mode", [False, True], ids=["auto", "confirm"])
@pytest.mark.parametrize(("ada", "ntp", "expected"), NO_PROCEDURE_TABLE)
def test_national_without_a_procedure(
    ada: ComponentState, ntp: ComponentState, expected: Scenario | None, confirm_mode: bool
) -> None:
    decisions = decide(active=[], national=nat(ada, ntp), eos={}, confirm_mode=confirm_mode)
    if expected is None:
        assert decisions == []
        return
    d = only(decisions)
    assert d.action == (Action.PROPOSE if confirm_mode else Action.OPEN)
    assert d.scenario == expected
    assert d.scope == Scope.NATIONAL
    assert d.procedure_id is None
    assert d.previous_scenario is None
    assert d.eori is None
    assert d.origin == Origin.DETECTED
    assert d.reason


@pytest.mark.parametrize("confirm_mode", [False, True], ids=["auto", "confirm"])
@pytest.mark.parametrize(("state", "origin_name"), PROCEDURE_KINDS)
@pytest.mark.parametrize(("ada", "ntp", "current", "change", "scenario"), EXISTING_TABLE)
def test_national_with_a_procedure(
    ada: ComponentState,
    ntp: ComponentState,
    current: Scenario,
    change: str | None,
    scenario: Scenario | None,
    state: ProcedureState,
    confirm_mode: bool,
    origin_name: str,
) -> None:
    origin, auto_close, follows_probes = ORIGINS[origin_name]
    active = [national_proc("P-7", current, state=state, origin=origin, auto_close=auto_close)]
    decisions = decide(active=active, national=nat(ada, ntp), eos={}, confirm_mode=confirm_mode)
    if change is None or not follows_probes:
        assert decisions == []
        return
    d = only(decisions)
    assert d.procedure_id == "P-7"
    assert d.scope == Scope.NATIONAL
    assert d.eori is None
    assert d.scenario == scenario
    if change == "close":
        # A proposal nobody confirmed is withdrawn, not closed: EOs were never told of it.
        assert d.action == (Action.WITHDRAW if state == PROPOSED else Action.CLOSE)
        assert d.previous_scenario is None
    else:
        # A scenario change is one update of the same procedure, proposed or open, never close + open.
        assert d.action == Action.UPDATE
        assert d.previous_scenario == current


def test_proposed_procedure_whose_channel_recovers_is_withdrawn() -> None:
    active = [national_proc("P-1", S2, state=PROPOSED)]
    d = only(decide(active=active, national=nat(UP, UP), eos={}, confirm_mode=True))
    assert (d.action, d.procedure_id, d.scenario) == (Action.WITHDRAW, "P-1", S2)
    assert "withdrawn" in d.reason


def test_proposed_procedure_whose_scenario_changes_is_updated_in_place() -> None:
    active = [national_proc("P-1", S2, state=PROPOSED)]
    d = only(decide(active=active, national=nat(DOWN, DOWN), eos={}, confirm_mode=True))
    assert (d.action, d.procedure_id, d.scenario, d.previous_scenario) == (Action.UPDATE, "P-1", S3, S2)


def test_closing_scenario_3_with_ntp_still_down_names_ntp() -> None:
    d = only(decide(active=[national_proc("P-3", S3)], national=nat(UP, DOWN), eos={}, confirm_mode=False))
    assert d.action == Action.CLOSE
    assert "NTP" in d.reason


@pytest.mark.parametrize(("ada", "ntp"), list(itertools.product(ALL_STATES, ALL_STATES)))
def test_operator_declared_procedure_without_auto_close_is_never_touched_by_probes(
    ada: ComponentState, ntp: ComponentState
) -> None:
    for scenario in (S2, S3):
        active = [national_proc("OP-1", scenario, origin=Origin.OPERATOR, auto_close=False)]
        for confirm_mode in (False, True):
            assert decide(active=active, national=nat(ada, ntp), eos={}, confirm_mode=confirm_mode) == []


def test_operator_declared_procedure_with_auto_close_follows_the_probes() -> None:
    active = [national_proc("OP-2", S2, origin=Origin.OPERATOR, auto_close=True)]
    closed = only(decide(active=active, national=nat(UP, UP), eos={}, confirm_mode=False))
    assert (closed.action, closed.procedure_id) == (Action.CLOSE, "OP-2")
    updated = only(decide(active=active, national=nat(DOWN, DOWN), eos={}, confirm_mode=False))
    assert (updated.action, updated.procedure_id, updated.scenario) == (Action.UPDATE, "OP-2", S3)


# --- decide: scenario 1, one EO's own B2G endpoint -----------------------------------------------------


@pytest.mark.parametrize("confirm_mode", [False, True], ids=["auto", "confirm"])
def test_eo_endpoint_down_without_procedure_opens_scenario_1(confirm_mode: bool) -> None:
    d = only(decide(active=[], national=nat(UP, UP), eos={EORI_A: eo_view(DOWN)}, confirm_mode=confirm_mode))
    assert d.action == (Action.PROPOSE if confirm_mode else Action.OPEN)
    assert (d.scenario, d.scope, d.eori) == (S1, Scope.EO, EORI_A)
    assert d.procedure_id is None
    assert d.origin == Origin.DETECTED
    assert d.previous_scenario is None


@pytest.mark.parametrize("confirm_mode", [False, True], ids=["auto", "confirm"])
@pytest.mark.parametrize(
    ("state", "expected"), [(OPEN, Action.CLOSE), (PROPOSED, Action.WITHDRAW)], ids=["open", "proposed"]
)
def test_eo_endpoint_up_ends_a_detected_procedure(
    state: ProcedureState, expected: Action, confirm_mode: bool
) -> None:
    active = [eo_proc("E-1", EORI_A, state=state)]
    d = only(decide(active=active, national=nat(UP, UP), eos={EORI_A: eo_view(UP)}, confirm_mode=confirm_mode))
    assert d.action == expected
    assert (d.procedure_id, d.eori, d.scope, d.scenario) == ("E-1", EORI_A, Scope.EO, S1)


@pytest.mark.parametrize("eo_state", ALL_STATES)
def test_eo_report_procedure_is_left_to_the_eo(eo_state: ComponentState) -> None:
    active = [eo_proc("E-2", EORI_A, origin=Origin.EO_REPORT, auto_close=False)]
    for confirm_mode in (False, True):
        assert decide(active=active, national=nat(UP, UP), eos={EORI_A: eo_view(eo_state)},
                      confirm_mode=confirm_mode) == []


@pytest.mark.parametrize("eo_state", ALL_STATES)
def test_operator_eo_procedure_without_auto_close_is_left_alone(eo_state: ComponentState) -> None:
    active = [eo_proc("E-3", EORI_A, origin=Origin.OPERATOR, auto_close=False)]
    assert decide(active=active, national=nat(UP, UP), eos={EORI_A: eo_view(eo_state)}, confirm_mode=False) == []


def test_operator_eo_procedure_with_auto_close_is_closed_by_the_probe() -> None:
    active = [eo_proc("E-4", EORI_A, origin=Origin.OPERATOR, auto_close=True)]
    d = only(decide(active=active, national=nat(UP, UP), eos={EORI_A: eo_view(UP)}, confirm_mode=False))
    assert (d.action, d.procedure_id) == (Action.CLOSE, "E-4")


@pytest.mark.parametrize("state", [OPEN, PROPOSED])
def test_eo_endpoint_still_down_with_a_procedure_changes_nothing(state: ProcedureState) -> None:
    active = [eo_proc("E-5", EORI_A, state=state)]
    for confirm_mode in (False, True):
        assert decide(active=active, national=nat(UP, UP), eos={EORI_A: eo_view(DOWN)},
                      confirm_mode=confirm_mode) == []


@pytest.mark.parametrize("with_procedure", [False, True])
def test_eo_endpoint_unknown_decides_nothing(with_procedure: bool) -> None:
    active = [eo_proc("E-6", EORI_A)] if with_procedure else []
    for confirm_mode in (False, True):
        assert decide(active=active, national=nat(UP, UP), eos={EORI_A: eo_view(UNKNOWN)},
                      confirm_mode=confirm_mode) == []


def test_eo_endpoint_up_without_procedure_decides_nothing() -> None:
    assert decide(active=[], national=nat(UP, UP), eos={EORI_A: eo_view(UP)}, confirm_mode=False) == []


def test_several_eos_are_independent() -> None:
    eori_d = "LU00000004"
    active = [eo_proc("E-B", EORI_B), eo_proc("E-C", EORI_C), eo_proc("E-D", eori_d, state=PROPOSED)]
    eos = {
        EORI_A: eo_view(DOWN),  # no procedure -> open
        EORI_B: eo_view(UP),  # open procedure -> close
        EORI_C: eo_view(UNKNOWN),  # open procedure, blind -> nothing
        eori_d: eo_view(UP),  # proposed -> withdraw
        "LU00000005": eo_view(UP),  # nothing to end
    }
    decisions = decide(active=active, national=nat(UP, UP), eos=eos, confirm_mode=False)
    got = {(d.eori, d.action, d.procedure_id) for d in decisions}
    assert got == {(EORI_A, Action.OPEN, None), (EORI_B, Action.CLOSE, "E-B"), (eori_d, Action.WITHDRAW, "E-D")}
    assert len(decisions) == 3
    assert all(d.scope == Scope.EO and d.scenario == S1 for d in decisions)


def test_eo_procedure_of_one_eori_does_not_cover_another() -> None:
    active = [eo_proc("E-A", EORI_A)]
    d = only(decide(active=active, national=nat(UP, UP), eos={EORI_B: eo_view(DOWN)}, confirm_mode=False))
    assert (d.action, d.eori, d.procedure_id) == (Action.OPEN, EORI_B, None)


@pytest.mark.parametrize("confirm_mode", [False, True], ids=["auto", "confirm"])
def test_scenario_1_beside_a_new_national_procedure(confirm_mode: bool) -> None:
    decisions = decide(active=[], national=nat(DOWN, UP), eos={EORI_A: eo_view(DOWN)}, confirm_mode=confirm_mode)
    new = Action.PROPOSE if confirm_mode else Action.OPEN
    national = only(of_scope(decisions, Scope.NATIONAL))
    eo = only(of_scope(decisions, Scope.EO))
    assert (national.action, national.scenario, national.eori) == (new, S2, None)
    assert (eo.action, eo.scenario, eo.eori) == (new, S1, EORI_A)
    assert len(decisions) == 2


def test_scenario_1_and_national_changes_in_one_call() -> None:
    active = [national_proc("N-1", S2), eo_proc("E-A", EORI_A)]
    decisions = decide(active=active, national=nat(DOWN, DOWN),
                       eos={EORI_A: eo_view(UP), EORI_B: eo_view(DOWN)}, confirm_mode=False)
    national = only(of_scope(decisions, Scope.NATIONAL))
    assert (national.action, national.procedure_id, national.scenario) == (Action.UPDATE, "N-1", S3)
    eo = {(d.eori, d.action, d.procedure_id) for d in of_scope(decisions, Scope.EO)}
    assert eo == {(EORI_A, Action.CLOSE, "E-A"), (EORI_B, Action.OPEN, None)}
    assert len(decisions) == 3


def test_an_eo_procedure_is_not_taken_for_the_national_one() -> None:
    # Only an EO procedure is active: the national side has none, so ADA down opens one.
    d = only(decide(active=[eo_proc("E-A", EORI_A)], national=nat(DOWN, DOWN), eos={}, confirm_mode=False))
    assert (d.action, d.scope, d.scenario, d.procedure_id) == (Action.OPEN, Scope.NATIONAL, S3, None)


def test_the_national_procedure_is_not_taken_for_an_eo_one() -> None:
    d = only(decide(active=[national_proc("N-1", S2)], national=nat(DOWN, UP), eos={EORI_A: eo_view(DOWN)},
                    confirm_mode=False))
    assert (d.action, d.scope, d.eori, d.procedure_id) == (Action.OPEN, Scope.EO, EORI_A, None)


# --- eo_report: an EO tells about its own B2G system ---------------------------------------------------


def test_eo_reports_down_without_procedure_opens_one_of_origin_eo_report() -> None:
    d = eo_report(eori=EORI_A, down=True, current=None, detail="gateway certificate expired")
    assert d is not None
    assert d.action == Action.OPEN
    assert (d.scenario, d.scope, d.eori, d.origin) == (S1, Scope.EO, EORI_A, Origin.EO_REPORT)
    assert d.procedure_id is None
    assert "gateway certificate expired" in d.reason


def test_eo_reports_down_on_a_proposed_procedure_confirms_it() -> None:
    d = eo_report(eori=EORI_A, down=True, current=eo_proc("E-1", EORI_A, state=PROPOSED), detail="disk full")
    assert d is not None
    assert (d.action, d.procedure_id, d.eori, d.scope, d.scenario) == (Action.CONFIRM, "E-1", EORI_A, Scope.EO, S1)
    assert "disk full" in d.reason


@pytest.mark.parametrize("origin", [Origin.DETECTED, Origin.EO_REPORT, Origin.OPERATOR])
def test_eo_reports_down_on_an_open_procedure_changes_nothing(origin: Origin) -> None:
    current = eo_proc("E-1", EORI_A, origin=origin, auto_close=origin == Origin.DETECTED)
    assert eo_report(eori=EORI_A, down=True, current=current, detail=None) is None


@pytest.mark.parametrize("origin", [Origin.DETECTED, Origin.EO_REPORT, Origin.OPERATOR])
def test_eo_reports_up_closes_an_open_procedure(origin: Origin) -> None:
    current = eo_proc("E-1", EORI_A, origin=origin, auto_close=False)
    d = eo_report(eori=EORI_A, down=False, current=current, detail="restarted")
    assert d is not None
    assert (d.action, d.procedure_id, d.eori, d.scope, d.scenario) == (Action.CLOSE, "E-1", EORI_A, Scope.EO, S1)
    assert "restarted" in d.reason


def test_eo_reports_up_withdraws_a_proposed_procedure() -> None:
    d = eo_report(eori=EORI_A, down=False, current=eo_proc("E-1", EORI_A, state=PROPOSED), detail=None)
    assert d is not None
    assert (d.action, d.procedure_id, d.eori) == (Action.WITHDRAW, "E-1", EORI_A)


def test_eo_reports_up_without_procedure_changes_nothing() -> None:
    assert eo_report(eori=EORI_A, down=False, current=None, detail="all good") is None


def test_eo_report_without_detail_has_a_clean_reason() -> None:
    d = eo_report(eori=EORI_A, down=True, current=None, detail=None)
    assert d is not None
    assert d.reason
    assert not d.reason.rstrip().endswith(":")
    assert "None" not in d.reason


# --- declare: an operator opens a procedure by hand ---------------------------------------------------


@pytest.mark.parametrize("eori", [None, ""])
def test_declare_scenario_1_needs_an_eori(eori: str | None) -> None:
    with pytest.raises(ValueError, match="eori"):
        declare(scenario=S1, eori=eori, reason="phone call", active=[])


@pytest.mark.parametrize("scenario", [S2, S3])
def test_declare_national_scenario_refuses_an_eori(scenario: Scenario) -> None:
    with pytest.raises(ValueError, match="eori"):
        declare(scenario=scenario, eori=EORI_A, reason="phone call", active=[])


@pytest.mark.parametrize("scenario", [S2, S3])
@pytest.mark.parametrize("existing", [S2, S3])
@pytest.mark.parametrize("state", [OPEN, PROPOSED])
def test_declare_national_clashes_with_an_active_national_procedure(
    scenario: Scenario, existing: Scenario, state: ProcedureState
) -> None:
    active = [national_proc("N-42", existing, state=state)]
    with pytest.raises(Rejected, match="N-42"):
        declare(scenario=scenario, eori=None, reason="manual", active=active)


@pytest.mark.parametrize("state", [OPEN, PROPOSED])
def test_declare_scenario_1_clashes_with_the_same_eori(state: ProcedureState) -> None:
    active = [eo_proc("E-9", EORI_A, state=state)]
    with pytest.raises(Rejected, match="E-9"):
        declare(scenario=S1, eori=EORI_A, reason="manual", active=active)


def test_declare_scenario_1_ignores_other_eoris_and_national_procedures() -> None:
    active = [eo_proc("E-B", EORI_B), national_proc("N-1", S3)]
    d = declare(scenario=S1, eori=EORI_A, reason="EO phoned the Servicedesk", active=active)
    assert (d.action, d.scenario, d.scope, d.eori, d.origin) == (Action.OPEN, S1, Scope.EO, EORI_A, Origin.OPERATOR)
    assert d.procedure_id is None
    assert d.reason == "EO phoned the Servicedesk"


@pytest.mark.parametrize("scenario", [S2, S3])
def test_declare_national_ignores_eo_procedures(scenario: Scenario) -> None:
    active = [eo_proc("E-A", EORI_A), eo_proc("E-B", EORI_B, state=PROPOSED)]
    d = declare(scenario=scenario, eori=None, reason="planned maintenance", active=active)
    assert (d.action, d.scenario, d.scope, d.eori, d.origin) == (
        Action.OPEN, scenario, Scope.NATIONAL, None, Origin.OPERATOR)
    assert d.procedure_id is None
    assert d.reason == "planned maintenance"


# --- confirm / close: operator commands on one procedure ----------------------------------------------


def test_confirm_nothing_is_rejected() -> None:
    with pytest.raises(Rejected):
        confirm(procedure=None, reason="ok")


@pytest.mark.parametrize("procedure", [national_proc("N-1", S2), eo_proc("E-1", EORI_A)], ids=["national", "eo"])
def test_confirm_an_open_procedure_is_rejected(procedure: ActiveProcedure) -> None:
    with pytest.raises(Rejected, match="open"):
        confirm(procedure=procedure, reason="ok")


@pytest.mark.parametrize(
    "procedure",
    [national_proc("N-1", S3, state=PROPOSED), eo_proc("E-1", EORI_A, state=PROPOSED)],
    ids=["national", "eo"],
)
def test_confirm_a_proposed_procedure(procedure: ActiveProcedure) -> None:
    d = confirm(procedure=procedure, reason="checked with ops")
    assert d.action == Action.CONFIRM
    assert (d.procedure_id, d.scenario, d.scope, d.eori) == (
        procedure.procedure_id, procedure.scenario, procedure.scope, procedure.eori)
    assert d.reason == "checked with ops"


def test_close_nothing_is_rejected() -> None:
    with pytest.raises(Rejected):
        close(procedure=None, reason="done")


@pytest.mark.parametrize(
    ("procedure", "expected"),
    [
        (national_proc("N-1", S2), Action.CLOSE),
        (national_proc("N-1", S3, origin=Origin.OPERATOR, auto_close=False), Action.CLOSE),
        (eo_proc("E-1", EORI_A, origin=Origin.EO_REPORT, auto_close=False), Action.CLOSE),
        (national_proc("N-1", S2, state=PROPOSED), Action.WITHDRAW),
        (eo_proc("E-1", EORI_A, state=PROPOSED), Action.WITHDRAW),
    ],
    ids=["national-open", "national-operator", "eo-report", "national-proposed", "eo-proposed"],
)
def test_close(procedure: ActiveProcedure, expected: Action) -> None:
    d = close(procedure=procedure, reason="resolved")
    assert d.action == expected
    assert (d.procedure_id, d.scenario, d.scope, d.eori) == (
        procedure.procedure_id, procedure.scenario, procedure.scope, procedure.eori)
    assert d.reason == "resolved"


# --- advisories ----------------------------------------------------------------------------------------


def advisories(
    ada: ComponentState, ntp: ComponentState, active: set[AdvisoryKind], *, blind_allowed: bool = True
) -> list[AdvisoryChange]:
    return decide_advisories(active=active, national=nat(ada, ntp), blind_allowed=blind_allowed)


def test_ntp_only_outage_raises_the_ntp_advisory_once() -> None:
    change = only_change(advisories(UP, DOWN, set()))
    assert (change.kind, change.raise_it, change.components) == (NTP_ADVISORY, True, (NTP,))
    assert change.reason
    assert advisories(UP, DOWN, {NTP_ADVISORY}) == []


def only_change(changes: list[AdvisoryChange]) -> AdvisoryChange:
    assert len(changes) == 1, changes
    return changes[0]


@pytest.mark.parametrize(("ada", "ntp"), [(DOWN, DOWN), (DOWN, UP), (UP, UP), (UNKNOWN, DOWN)])
def test_ntp_advisory_not_raised_unless_ntp_alone_is_down(ada: ComponentState, ntp: ComponentState) -> None:
    changes = advisories(ada, ntp, set(), blind_allowed=False)
    assert [c for c in changes if c.kind == NTP_ADVISORY] == []


def test_ntp_advisory_cleared_when_ntp_is_back() -> None:
    change = only_change(advisories(UP, UP, {NTP_ADVISORY}))
    assert (change.kind, change.raise_it) == (NTP_ADVISORY, False)
    assert "available" in change.reason
    assert "superseded" not in change.reason


def test_ntp_advisory_superseded_when_ada_also_goes_down() -> None:
    change = only_change(advisories(DOWN, DOWN, {NTP_ADVISORY}))
    assert (change.kind, change.raise_it) == (NTP_ADVISORY, False)
    assert "superseded" in change.reason


@pytest.mark.parametrize("ada", [UP, DOWN, UNKNOWN])
@pytest.mark.parametrize("blind_allowed", [False, True])
def test_ntp_advisory_not_cleared_while_ntp_is_unknown(ada: ComponentState, blind_allowed: bool) -> None:
    changes = advisories(ada, UNKNOWN, {NTP_ADVISORY}, blind_allowed=blind_allowed)
    assert [c for c in changes if c.kind == NTP_ADVISORY] == []


def test_ntp_advisory_not_cleared_when_only_ada_becomes_unknown() -> None:
    changes = advisories(UNKNOWN, DOWN, {NTP_ADVISORY}, blind_allowed=False)
    assert [c for c in changes if c.kind == NTP_ADVISORY] == []


@pytest.mark.parametrize(
    ("ada", "ntp", "blind"),
    [(UNKNOWN, UP, (ADA,)), (UP, UNKNOWN, (NTP,)), (UNKNOWN, UNKNOWN, (ADA, NTP)), (UNKNOWN, DOWN, (ADA,))],
)
def test_monitoring_blind_raised_listing_exactly_the_unknown_components(
    ada: ComponentState, ntp: ComponentState, blind: tuple[Component, ...]
) -> None:
    changes = [c for c in advisories(ada, ntp, set()) if c.kind == BLIND]
    change = only_change(changes)
    assert change.raise_it is True
    assert change.components == blind
    for component in (ADA, NTP):
        assert (component.value in change.reason) == (component in blind)


def test_monitoring_blind_not_raised_when_not_allowed() -> None:
    assert advisories(UNKNOWN, UNKNOWN, set(), blind_allowed=False) == []


def test_monitoring_blind_not_raised_twice() -> None:
    assert advisories(UNKNOWN, UNKNOWN, {BLIND}) == []


@pytest.mark.parametrize("blind_allowed", [False, True])
def test_monitoring_blind_cleared_when_every_component_is_known(blind_allowed: bool) -> None:
    change = only_change(advisories(UP, UP, {BLIND}, blind_allowed=blind_allowed))
    assert (change.kind, change.raise_it) == (BLIND, False)


def test_monitoring_blind_stays_while_one_component_is_still_unknown() -> None:
    assert advisories(UP, UNKNOWN, {BLIND, NTP_ADVISORY}) == []
    assert [c for c in advisories(UNKNOWN, UP, {BLIND}) if c.kind == BLIND] == []


def test_both_advisories_at_once() -> None:
    changes = advisories(UP, DOWN, {BLIND})
    assert {(c.kind, c.raise_it) for c in changes} == {(NTP_ADVISORY, True), (BLIND, False)}
    assert len(changes) == 2


# --- component_views / eo_views: quorum, staleness, targets --------------------------------------------


def observation(
    target: str,
    component: Component,
    detector: str,
    state: ComponentState,
    *,
    age_s: float = 1.0,
    eori: str | None = None,
) -> Observation:
    return Observation(
        target_id=target,
        component=component,
        detector_instance=detector,
        state=state,
        observed_at=NOW - timedelta(seconds=age_s),
        reason="ok" if state == UP else "timeout",
        eori=eori,
    )


def vantage(component: Component, *states: ComponentState, eori: str | None = None) -> list[Observation]:
    """One target seen by one detector instance per state given."""
    return [observation("t1", component, f"det-{i}", s, eori=eori) for i, s in enumerate(states)]


def ada_state(observations: list[Observation], quorum: float | None) -> ComponentState:
    return component_views(observations, now=NOW, stale_after_s=STALE_AFTER_S, quorum=quorum)[ADA].state


@pytest.mark.parametrize(
    ("quorum", "states", "expected"),
    [
        (0.66, (DOWN, DOWN, UP), DOWN),  # 2 of 3 needed
        (0.66, (DOWN, UP, UP), UP),
        (0.66, (DOWN,), DOWN),  # 1 of 1
        (0.66, (UP,), UP),
        (0.66, (DOWN, UP), UNKNOWN),  # 2 of 2 needed
        (0.75, (DOWN, DOWN, DOWN, UP), DOWN),  # 3 of 4 needed
        (0.75, (UP, UP, UP, DOWN), UP),
        (0.75, (DOWN, DOWN, UP, UP), UNKNOWN),
        (1.0, (DOWN, DOWN, UP), UNKNOWN),  # unanimity: stricter than the default majority
        (1.0, (DOWN, DOWN, DOWN), DOWN),
        (0.3, (DOWN, UP, UP, UP), UP),  # 2 of 4 needed: 1 down is not enough, 3 up are
        (None, (DOWN, DOWN, UP), DOWN),  # default: strict majority
        (None, (DOWN, DOWN, UP, UP), UNKNOWN),
    ],
)
def test_configurable_quorum(
    quorum: float | None, states: tuple[ComponentState, ...], expected: ComponentState
) -> None:
    assert ada_state(vantage(ADA, *states), quorum) == expected


def test_quorum_counts_fresh_vantage_points_only() -> None:
    fresh_up = observation("t1", ADA, "det-0", UP)
    stale_down = [observation("t1", ADA, f"det-{i}", DOWN, age_s=STALE_AFTER_S + 5) for i in (1, 2)]
    views = component_views([fresh_up, *stale_down], now=NOW, stale_after_s=STALE_AFTER_S, quorum=0.66)
    assert views[ADA].state == UP  # 1 of 1 fresh
    assert views[ADA].evidence == (fresh_up,)
    assert views[NTP].state == UNKNOWN
    assert views[NTP].evidence == ()


def test_only_stale_observations_mean_unknown() -> None:
    obs = [observation("t1", NTP, "det-0", DOWN, age_s=STALE_AFTER_S + 1)]
    views = component_views(obs, now=NOW, stale_after_s=STALE_AFTER_S, quorum=0.66)
    assert views[NTP].state == UNKNOWN
    assert views[NTP].evidence == ()


def test_component_views_ignore_eo_endpoints() -> None:
    obs = vantage(EO_B2G, DOWN, DOWN, eori=EORI_A)
    views = component_views(obs, now=NOW, stale_after_s=STALE_AFTER_S, quorum=0.66)
    assert set(views) == {ADA, NTP}
    assert views[ADA].state == UNKNOWN
    assert views[NTP].state == UNKNOWN


def eo_states(observations: list[Observation], quorum: float | None = None) -> dict[str, ComponentState]:
    return {k: v.state for k, v in eo_views(observations, now=NOW, stale_after_s=STALE_AFTER_S, quorum=quorum).items()}


@pytest.mark.parametrize(
    ("first", "second", "expected"),
    [(DOWN, DOWN, DOWN), (DOWN, UP, UP), (UP, DOWN, UP), (UP, UP, UP)],
)
def test_eo_with_two_targets_is_down_only_when_both_are(
    first: ComponentState, second: ComponentState, expected: ComponentState
) -> None:
    obs = [
        observation("eo-a-1", EO_B2G, "det-0", first, eori=EORI_A),
        observation("eo-a-2", EO_B2G, "det-0", second, eori=EORI_A),
    ]
    assert eo_states(obs) == {EORI_A: expected}


def test_eo_views_grouped_by_eori() -> None:
    obs = [
        observation("eo-a", EO_B2G, "det-0", DOWN, eori=EORI_A),
        observation("eo-b", EO_B2G, "det-0", UP, eori=EORI_B),
        observation("eo-c", EO_B2G, "det-0", DOWN, eori=EORI_C, age_s=STALE_AFTER_S + 1),
    ]
    views = eo_views(obs, now=NOW, stale_after_s=STALE_AFTER_S)
    assert {k: v.state for k, v in views.items()} == {EORI_A: DOWN, EORI_B: UP, EORI_C: UNKNOWN}
    assert all(v.component == EO_B2G for v in views.values())
    assert views[EORI_A].evidence == (obs[0],)
    assert views[EORI_B].evidence == (obs[1],)
    assert views[EORI_C].evidence == ()  # the stale one is no evidence


def test_eo_views_ignore_observations_without_eori_and_national_ones() -> None:
    obs = [
        observation("eo-x", EO_B2G, "det-0", DOWN, eori=None),
        observation("ada", ADA, "det-0", DOWN, eori=EORI_A),
        observation("ntp", NTP, "det-0", DOWN),
    ]
    assert eo_views(obs, now=NOW, stale_after_s=STALE_AFTER_S) == {}


def test_eo_views_ignore_stale_vantage_points() -> None:
    obs = [
        observation("eo-a", EO_B2G, "det-0", UP, eori=EORI_A),
        observation("eo-a", EO_B2G, "det-1", DOWN, eori=EORI_A, age_s=STALE_AFTER_S + 1),
        observation("eo-a", EO_B2G, "det-2", DOWN, eori=EORI_A, age_s=STALE_AFTER_S + 1),
    ]
    assert eo_states(obs) == {EORI_A: UP}


@pytest.mark.parametrize(("states", "expected"), [((DOWN, DOWN, UP), DOWN), ((DOWN, UP, UP), UP)])
def test_eo_views_use_the_quorum(states: tuple[ComponentState, ...], expected: ComponentState) -> None:
    assert eo_states(vantage(EO_B2G, *states, eori=EORI_A), quorum=0.66) == {EORI_A: expected}
    assert eo_states(vantage(EO_B2G, *states, eori=EORI_A), quorum=1.0) == {EORI_A: UNKNOWN}


# --- a stateful model run against a simulated store ----------------------------------------------------

EORIS = (EORI_A, EORI_B, EORI_C)
MODEL_STATES = st.sampled_from(ALL_STATES)


class EngineModel(RuleBasedStateMachine):
    """Drives the engine as the service would, keeping the active procedures in a dict."""

    def __init__(self) -> None:
        super().__init__()
        self.store: dict[str, ActiveProcedure] = {}
        self.next_id = 0
        self.national: dict[Component, ComponentState] = {ADA: UNKNOWN, NTP: UNKNOWN}
        self.eo_states: dict[str, ComponentState | None] = dict.fromkeys(EORIS)
        self.confirm_mode = False

    # -- the simulated store --

    def active(self) -> list[ActiveProcedure]:
        return sorted(self.store.values(), key=lambda p: p.procedure_id)

    def national_procedures(self) -> list[ActiveProcedure]:
        return [p for p in self.store.values() if p.scope == Scope.NATIONAL]

    def of_eori(self, eori: str) -> ActiveProcedure | None:
        found = [p for p in self.store.values() if p.scope == Scope.EO and p.eori == eori]
        assert len(found) <= 1
        return found[0] if found else None

    def apply(self, d: Decision, *, auto_close: bool | None = None) -> None:
        if d.action in (Action.OPEN, Action.PROPOSE):
            assert d.procedure_id is None, d
            assert (d.scope == Scope.EO) == (d.scenario == S1) == (d.eori is not None), d
            self.next_id += 1
            pid = f"P{self.next_id}"
            if auto_close is None:
                auto_close = d.origin != Origin.EO_REPORT  # the service stores self-reports with auto_close False
            state = OPEN if d.action == Action.OPEN else PROPOSED
            self.store[pid] = ActiveProcedure(pid, d.scenario, d.scope, d.eori, state, d.origin, auto_close)
            return
        assert d.procedure_id is not None, d
        current = self.store[d.procedure_id]
        assert (d.scope, d.eori) == (current.scope, current.eori), (d, current)
        if d.action == Action.CONFIRM:
            assert current.state == PROPOSED, (d, current)
            self.store[d.procedure_id] = replace(current, state=OPEN)
        elif d.action == Action.UPDATE:
            assert d.scope == Scope.NATIONAL
            assert d.previous_scenario == current.scenario != d.scenario, (d, current)
            self.store[d.procedure_id] = replace(current, scenario=d.scenario)
        elif d.action == Action.CLOSE:
            assert current.state == OPEN, (d, current)
            del self.store[d.procedure_id]
        else:
            assert d.action == Action.WITHDRAW
            assert current.state == PROPOSED, (d, current)
            del self.store[d.procedure_id]

    def views(self) -> tuple[dict[Component, ComponentView], dict[str, ComponentView]]:
        eos = {eori: eo_view(s) for eori, s in self.eo_states.items() if s is not None}
        return nat(self.national[ADA], self.national[NTP]), eos

    def run_decide(self) -> list[Decision]:
        national, eos = self.views()
        decisions = decide(active=self.active(), national=national, eos=eos, confirm_mode=self.confirm_mode)
        for d in decisions:
            assert d.origin == Origin.DETECTED, d
            if d.procedure_id is not None:
                # The probes only move what they started, or what an operator declared auto_close.
                target = self.store[d.procedure_id]
                assert target.origin == Origin.DETECTED or target.auto_close, (d, target)
            self.apply(d)
        # The same views again: every transition has been acted on, nothing may happen twice.
        again = decide(active=self.active(), national=national, eos=eos, confirm_mode=self.confirm_mode)
        assert again == [], again
        return decisions

    # -- rules --

    @initialize(ada=MODEL_STATES, ntp=MODEL_STATES, confirm_mode=st.booleans())
    def start(self, ada: ComponentState, ntp: ComponentState, confirm_mode: bool) -> None:
        self.national = {ADA: ada, NTP: ntp}
        self.confirm_mode = confirm_mode

    @rule(component=st.sampled_from((ADA, NTP)), state=MODEL_STATES)
    def set_national(self, component: Component, state: ComponentState) -> None:
        self.national[component] = state

    @rule(eori=st.sampled_from(EORIS), state=st.none() | MODEL_STATES)
    def set_eo_endpoint(self, eori: str, state: ComponentState | None) -> None:
        self.eo_states[eori] = state

    @rule(eori=st.sampled_from(EORIS), state=MODEL_STATES)
    def eo_endpoint_probed(self, eori: str, state: ComponentState) -> None:
        """An EO endpoint changes and a probe round follows at once (the common case, kept likely)."""
        self.eo_states[eori] = state
        self.probe_round()

    @rule(component=st.sampled_from((ADA, NTP)), state=MODEL_STATES)
    def national_probed(self, component: Component, state: ComponentState) -> None:
        self.national[component] = state
        self.probe_round()

    @rule(confirm_mode=st.booleans())
    def set_mode(self, confirm_mode: bool) -> None:
        self.confirm_mode = confirm_mode

    @rule()
    def probe_round(self) -> None:
        self.run_decide()
        self.check_following_procedures_match_the_views()

    def check_following_procedures_match_the_views(self) -> None:
        ada, ntp = self.national[ADA], self.national[NTP]
        national = self.national_procedures()
        probe_driven = not national or national[0].origin == Origin.DETECTED or national[0].auto_close
        if probe_driven and ada == UP:
            assert national == []
        elif probe_driven and ada == DOWN and ntp != UNKNOWN:
            assert [p.scenario for p in national] == [S3 if ntp == DOWN else S2]
        for eori, state in self.eo_states.items():
            current = self.of_eori(eori)
            if state == DOWN:
                assert current is not None
            elif state == UP and current is not None:
                assert current.origin != Origin.DETECTED and not current.auto_close

    @rule(eori=st.sampled_from(EORIS), down=st.booleans(), detail=st.none() | st.just("self-report"))
    def report(self, eori: str, down: bool, detail: str | None) -> None:
        current = self.of_eori(eori)
        d = eo_report(eori=eori, down=down, current=current, detail=detail)
        if current is None:
            assert (d is None) == (not down)
        elif current.state == OPEN:
            assert (d is None) == down
        else:
            assert d is not None
        if d is not None:
            assert d.eori == eori
            self.apply(d)
        after = self.of_eori(eori)
        assert (after is not None and after.state == OPEN) == down

    @rule(
        scenario=st.sampled_from((S1, S2, S3)),
        eori=st.none() | st.sampled_from(EORIS),
        auto_close=st.booleans(),
    )
    def operator_declares(self, scenario: Scenario, eori: str | None, auto_close: bool) -> None:
        before = dict(self.store)
        if (scenario == S1) != (eori is not None):
            with pytest.raises(ValueError, match="eori"):
                declare(scenario=scenario, eori=eori, reason="operator", active=self.active())
        elif (self.of_eori(eori) if eori else next(iter(self.national_procedures()), None)) is not None:
            with pytest.raises(Rejected):
                declare(scenario=scenario, eori=eori, reason="operator", active=self.active())
        else:
            d = declare(scenario=scenario, eori=eori, reason="operator", active=self.active())
            assert (d.action, d.origin, d.scenario, d.eori) == (Action.OPEN, Origin.OPERATOR, scenario, eori)
            self.apply(d, auto_close=auto_close)
            return
        assert self.store == before

    @rule(pick=st.integers(min_value=0, max_value=5))
    def operator_closes(self, pick: int) -> None:
        active = self.active()
        if pick >= len(active):
            with pytest.raises(Rejected):
                close(procedure=None, reason="operator")
            return
        target = active[pick]
        d = close(procedure=target, reason="operator")
        self.apply(d)
        assert target.procedure_id not in self.store

    @rule(pick=st.integers(min_value=0, max_value=5))
    def operator_confirms(self, pick: int) -> None:
        active = self.active()
        target = active[pick] if pick < len(active) else None
        before = dict(self.store)
        if target is None or target.state != PROPOSED:
            with pytest.raises(Rejected):
                confirm(procedure=target, reason="operator")
            assert self.store == before
            return
        self.apply(confirm(procedure=target, reason="operator"))
        assert self.store[target.procedure_id].state == OPEN

    def recover_and_check(self) -> None:
        self.confirm_mode = False
        self.national = {ADA: UP, NTP: UP}
        self.eo_states = dict.fromkeys(EORIS, UP)
        for eori in EORIS:
            d = eo_report(eori=eori, down=False, current=self.of_eori(eori), detail=None)
            if d is not None:
                self.apply(d)
        self.run_decide()
        for p in self.store.values():
            # Only what an operator declared by hand, without auto_close, may outlive the recovery.
            assert p.origin == Origin.OPERATOR and not p.auto_close, p
            assert p.scope == Scope.NATIONAL, p  # EO ones were all ended by the EOs' own reports

    # -- invariants --

    @invariant()
    def at_most_one_national_procedure(self) -> None:
        assert len(self.national_procedures()) <= 1

    @invariant()
    def at_most_one_procedure_per_eori(self) -> None:
        eoris = [p.eori for p in self.store.values() if p.scope == Scope.EO]
        assert len(eoris) == len(set(eoris))
        assert all(e in EORIS for e in eoris)

    @invariant()
    def store_is_consistent(self) -> None:
        for pid, p in self.store.items():
            assert pid == p.procedure_id
            assert p.state in (OPEN, PROPOSED)
            assert (p.scope == Scope.EO) == (p.scenario == S1) == (p.eori is not None)
            if p.state == PROPOSED:
                assert p.origin == Origin.DETECTED  # only detection proposes

    def teardown(self) -> None:
        # Runs at the end of every example: whatever happened, full recovery in auto mode ends it all.
        self.recover_and_check()


def test_engine_model() -> None:
    run_state_machine_as_test(
        EngineModel,
        settings=settings(max_examples=100, stateful_step_count=40, deadline=None, database=None),
    )
