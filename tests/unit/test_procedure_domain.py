"""Unit tests of the national scenario engine (services/procedure/domain.py)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from services.procedure.domain import (
    MAX_CLOCK_SKEW,
    Action,
    ComponentView,
    NationalDecision,
    Observation,
    component_views,
    decide_national,
    desired_national_scenario,
    supporting_evidence,
    trusted_time,
)
from shared.events import Component, ComponentState, Scenario

UP = ComponentState.UP
DOWN = ComponentState.DOWN
UNKNOWN = ComponentState.UNKNOWN
ADA = Component.ADA_B2G
NTP = Component.NTP
S2 = Scenario.ADA_B2G_UNAVAILABLE
S3 = Scenario.LUCCS_UNAVAILABLE

NOW = datetime(2024, 3, 1, 12, 0, tzinfo=UTC)
STALE_AFTER_S = 60.0
FAST = settings(max_examples=200, deadline=None, database=None)


def obs(
    target: str,
    component: Component,
    detector: str,
    state: ComponentState,
    *,
    age_s: float = 1.0,
) -> Observation:
    return Observation(
        target_id=target,
        component=component,
        detector_instance=detector,
        state=state,
        observed_at=NOW - timedelta(seconds=age_s),
        reason="ok" if state == UP else "timeout",
    )


def views_of(ada: ComponentState, ntp: ComponentState) -> dict[Component, ComponentView]:
    return {ADA: ComponentView(ADA, ada, ()), NTP: ComponentView(NTP, ntp, ())}


def views(observations: Sequence[Observation]) -> dict[Component, ComponentView]:
    return component_views(observations, now=NOW, stale_after_s=STALE_AFTER_S)


# --- decide_national: every national transition ------------------------------------------------


@pytest.mark.parametrize(
    ("current", "ada", "ntp", "action", "scenario", "previous"),
    [
        pytest.param(None, DOWN, UP, Action.OPEN, S2, None, id="none->open S2 (ADA down, NTP up)"),
        pytest.param(None, DOWN, DOWN, Action.OPEN, S3, None, id="none->open S3 (both down)"),
        pytest.param(S2, DOWN, DOWN, Action.UPDATE, S3, S2, id="S2->update S3 (NTP also fails)"),
        pytest.param(S3, DOWN, UP, Action.UPDATE, S2, S3, id="S3->update S2 (NTP recovers, ADA still down)"),
        pytest.param(S3, UP, UP, Action.CLOSE, S3, None, id="S3->close (both recover)"),
        pytest.param(S3, UP, DOWN, Action.CLOSE, S3, None, id="S3->close (ADA back, NTP still down)"),
        pytest.param(S2, UP, UP, Action.CLOSE, S2, None, id="S2->close (ADA recovers)"),
        pytest.param(S2, UP, DOWN, Action.CLOSE, S2, None, id="S2->close (ADA recovers, NTP fails)"),
        pytest.param(S2, UP, UNKNOWN, Action.CLOSE, S2, None, id="S2->close (ADA recovers, NTP unknown)"),
    ],
)
def test_national_transitions(
    current: Scenario | None,
    ada: ComponentState,
    ntp: ComponentState,
    action: Action,
    scenario: Scenario,
    previous: Scenario | None,
) -> None:
    decision = decide_national(current, views_of(ada, ntp))
    assert decision is not None
    assert decision.action == action
    assert decision.scenario == scenario
    assert decision.previous_scenario == previous
    assert decision.reason.strip()


def test_closing_with_ntp_still_down_gives_an_ntp_advisory_reason() -> None:
    decision = decide_national(S3, views_of(UP, DOWN))
    assert decision is not None
    assert decision.action == Action.CLOSE
    assert "NTP" in decision.reason
    assert "advisory" in decision.reason.lower()


def test_closing_with_both_up_does_not_mention_an_ntp_advisory() -> None:
    decision = decide_national(S3, views_of(UP, UP))
    assert decision is not None
    assert "advisory" not in decision.reason.lower()


def test_open_reasons_name_the_situation() -> None:
    s2 = decide_national(None, views_of(DOWN, UP))
    s3 = decide_national(None, views_of(DOWN, DOWN))
    assert s2 is not None
    assert s3 is not None
    assert "NTP is available" in s2.reason
    assert "both unavailable" in s3.reason
    assert s2.reason != s3.reason


@pytest.mark.parametrize(
    ("current", "ada", "ntp"),
    [
        pytest.param(None, UP, DOWN, id="NTP-only outage is not a fallback scenario"),
        pytest.param(None, UP, UP, id="all fine"),
        pytest.param(None, UP, UNKNOWN, id="ADA up, NTP unknown, nothing open"),
        pytest.param(S2, DOWN, UP, id="S2 already open"),
        pytest.param(S3, DOWN, DOWN, id="S3 already open"),
        *[
            pytest.param(current, UNKNOWN, ntp, id=f"ADA unknown, current={current}, NTP {ntp}")
            for current in (None, S2, S3)
            for ntp in (UP, DOWN, UNKNOWN)
        ],
        *[
            pytest.param(current, DOWN, UNKNOWN, id=f"ADA down, NTP unknown, current={current}")
            for current in (None, S2, S3)
        ],
    ],
)
def test_no_decision(current: Scenario | None, ada: ComponentState, ntp: ComponentState) -> None:
    assert decide_national(current, views_of(ada, ntp)) is None


@pytest.mark.parametrize(
    ("ada", "ntp", "expected"),
    [
        (DOWN, UP, S2),
        (DOWN, DOWN, S3),
        (UP, UP, None),
        (UP, DOWN, None),
        (UP, UNKNOWN, None),
        (UNKNOWN, UP, None),
        (UNKNOWN, DOWN, None),
        (UNKNOWN, UNKNOWN, None),
    ],
)
def test_desired_national_scenario(ada: ComponentState, ntp: ComponentState, expected: Scenario | None) -> None:
    assert desired_national_scenario(ada, ntp) == expected


def test_decide_national_uses_the_views_not_their_evidence() -> None:
    # The decision follows the component states; evidence is only carried for audit.
    evidence = (obs("ada-1", ADA, "d1", UP),)
    v = {ADA: ComponentView(ADA, DOWN, evidence), NTP: ComponentView(NTP, UP, ())}
    decision = decide_national(None, v)
    assert decision is not None
    assert decision.scenario == S2


# --- component_views: quorum, staleness, several targets --------------------------------------


def test_no_observations_means_both_components_unknown() -> None:
    result = views([])
    assert set(result) == {ADA, NTP}
    assert result[ADA] == ComponentView(ADA, UNKNOWN, ())
    assert result[NTP] == ComponentView(NTP, UNKNOWN, ())


@pytest.mark.parametrize(
    ("states", "expected"),
    [
        pytest.param([DOWN], DOWN, id="1 of 1 down"),
        pytest.param([UP], UP, id="1 of 1 up"),
        pytest.param([UNKNOWN], UNKNOWN, id="1 of 1 unknown"),
        pytest.param([DOWN, DOWN, UP], DOWN, id="2 of 3 down"),
        pytest.param([UP, UP, DOWN], UP, id="2 of 3 up"),
        pytest.param([DOWN, UP], UNKNOWN, id="1 of 2 down: no majority"),
        pytest.param([DOWN, DOWN], DOWN, id="2 of 2 down"),
        pytest.param([DOWN, UP, UNKNOWN], UNKNOWN, id="1 down 1 up 1 unknown: no majority"),
        pytest.param([DOWN, DOWN, UNKNOWN], DOWN, id="2 down 1 unknown"),
        pytest.param([DOWN, DOWN, UP, UP], UNKNOWN, id="2 of 4 down: not a strict majority"),
        pytest.param([DOWN, DOWN, DOWN, UP, UP], DOWN, id="3 of 5 down"),
    ],
)
def test_target_state_is_the_strict_majority_of_its_vantage_points(
    states: list[ComponentState], expected: ComponentState
) -> None:
    observations = [obs("ada-1", ADA, f"detector-{i}", s) for i, s in enumerate(states)]
    result = views(observations)
    assert result[ADA].state == expected
    assert result[NTP].state == UNKNOWN


def test_stale_observations_are_ignored() -> None:
    observations = [obs("ada-1", ADA, "d1", DOWN, age_s=STALE_AFTER_S + 1)]
    result = views(observations)
    assert result[ADA].state == UNKNOWN
    assert result[ADA].evidence == ()


def test_an_observation_just_within_the_window_is_fresh() -> None:
    observations = [obs("ada-1", ADA, "d1", DOWN, age_s=STALE_AFTER_S - 1)]
    assert views(observations)[ADA].state == DOWN


def test_quorum_counts_only_fresh_vantage_points() -> None:
    # Two stale "down" views must not outvote one fresh "up" view, and vice versa.
    stale_down = [obs("ada-1", ADA, f"d{i}", DOWN, age_s=600) for i in (1, 2)]
    assert views([*stale_down, obs("ada-1", ADA, "d3", UP)])[ADA].state == UP
    stale_up = [obs("ntp-1", NTP, f"d{i}", UP, age_s=600) for i in (1, 2)]
    assert views([*stale_up, obs("ntp-1", NTP, "d3", DOWN)])[NTP].state == DOWN


def test_staleness_follows_the_given_window() -> None:
    observation = obs("ada-1", ADA, "d1", DOWN, age_s=90)
    assert component_views([observation], now=NOW, stale_after_s=60)[ADA].state == UNKNOWN
    assert component_views([observation], now=NOW, stale_after_s=120)[ADA].state == DOWN


@pytest.mark.parametrize(
    ("target_states", "expected"),
    [
        pytest.param([DOWN, DOWN], DOWN, id="every target down"),
        pytest.param([DOWN, UP], UP, id="one target up"),
        pytest.param([UP, UP], UP, id="every target up"),
        pytest.param([DOWN, UNKNOWN], UNKNOWN, id="one down, one unknown"),
        pytest.param([UNKNOWN, UNKNOWN], UNKNOWN, id="every target unknown"),
        pytest.param([UP, UNKNOWN], UP, id="one up, one unknown"),
        pytest.param([DOWN, DOWN, DOWN], DOWN, id="three targets down"),
        pytest.param([DOWN, DOWN, UP], UP, id="two of three targets down"),
    ],
)
def test_component_is_down_only_when_every_target_is_down(
    target_states: list[ComponentState], expected: ComponentState
) -> None:
    observations = [obs(f"ada-{i}", ADA, "d1", s) for i, s in enumerate(target_states)]
    assert views(observations)[ADA].state == expected


def test_a_target_with_only_stale_observations_counts_as_unknown() -> None:
    observations = [obs("ada-1", ADA, "d1", DOWN), obs("ada-2", ADA, "d1", DOWN, age_s=STALE_AFTER_S * 10)]
    assert views(observations)[ADA].state == UNKNOWN


def test_evidence_contains_exactly_the_fresh_observations_of_the_component() -> None:
    fresh = [
        obs("ada-1", ADA, "d1", DOWN),
        obs("ada-1", ADA, "d2", DOWN, age_s=30),
        obs("ada-2", ADA, "d1", DOWN, age_s=59),
    ]
    stale = [obs("ada-1", ADA, "d3", UP, age_s=61), obs("ada-2", ADA, "d2", UP, age_s=3600)]
    ntp = [obs("ntp-1", NTP, "d1", UP)]
    result = views([*stale, *fresh, *ntp])
    assert result[ADA].state == DOWN
    assert sorted(result[ADA].evidence, key=repr) == sorted(fresh, key=repr)
    assert result[NTP].evidence == tuple(ntp)


def test_components_do_not_influence_each_other() -> None:
    result = views([obs("ada-1", ADA, "d1", DOWN), obs("ntp-1", NTP, "d1", UP)])
    assert (result[ADA].state, result[NTP].state) == (DOWN, UP)
    assert all(o.component == ADA for o in result[ADA].evidence)
    assert all(o.component == NTP for o in result[NTP].evidence)


def test_eo_b2g_observations_are_ignored_for_national_components() -> None:
    eo = [obs("eo-LU123", Component.EO_B2G, "d1", DOWN), obs("eo-LU456", Component.EO_B2G, "d2", DOWN)]
    result = views(eo)
    assert set(result) == {ADA, NTP}
    assert result[ADA] == ComponentView(ADA, UNKNOWN, ())
    assert result[NTP] == ComponentView(NTP, UNKNOWN, ())
    # ...and they do not dilute a national target's quorum either.
    mixed = views([*eo, obs("ada-1", ADA, "d1", DOWN)])
    assert mixed[ADA].state == DOWN
    assert all(o.component != Component.EO_B2G for v in mixed.values() for o in v.evidence)


def test_same_target_id_under_two_components_is_two_targets() -> None:
    result = views([obs("shared-id", ADA, "d1", DOWN), obs("shared-id", NTP, "d1", UP)])
    assert (result[ADA].state, result[NTP].state) == (DOWN, UP)


def test_views_drive_the_decision_end_to_end() -> None:
    # ADA: two targets, both down by a 2-of-3 majority; NTP: one target down by 2-of-2.
    observations = [
        *(obs("ada-1", ADA, d, s) for d, s in (("d1", DOWN), ("d2", DOWN), ("d3", UP))),
        *(obs("ada-2", ADA, d, s) for d, s in (("d1", DOWN), ("d2", UP), ("d3", DOWN))),
        *(obs("ntp-1", NTP, d, DOWN) for d in ("d1", "d2")),
    ]
    v = views(observations)
    assert (v[ADA].state, v[NTP].state) == (DOWN, DOWN)
    assert len(v[ADA].evidence) == 6
    decision = decide_national(None, v)
    assert decision is not None
    assert (decision.action, decision.scenario, decision.previous_scenario) == (Action.OPEN, S3, None)


# --- properties -------------------------------------------------------------------------------

states = st.sampled_from([UP, DOWN, UNKNOWN])
TARGETS = {ADA: ("ada-1", "ada-2"), NTP: ("ntp-1", "ntp-2"), Component.EO_B2G: ("eo-1",)}


@st.composite
def observation_sets(draw: st.DrawFn) -> list[Observation]:
    """At most one observation per (target, detector), like the latest-per-vantage-point table."""
    result: list[Observation] = []
    for component, targets in TARGETS.items():
        for target in targets:
            for detector in ("d1", "d2", "d3"):
                if draw(st.booleans()):
                    age = draw(st.sampled_from([0.0, 10.0, 59.0, 61.0, 300.0]))
                    result.append(obs(target, component, detector, draw(states), age_s=age))
    return result


def reference_component_state(observations: Sequence[Observation], component: Component) -> ComponentState:
    target_states = []
    targets_seen = sorted({o.target_id for o in observations if o.component == component})
    for target in targets_seen:
        fresh = [
            o.state
            for o in observations
            if o.component == component
            and o.target_id == target
            and (NOW - o.observed_at).total_seconds() <= STALE_AFTER_S
        ]
        downs, ups = fresh.count(DOWN), fresh.count(UP)
        if fresh and downs > len(fresh) / 2:
            target_states.append(DOWN)
        elif fresh and ups > len(fresh) / 2:
            target_states.append(UP)
        else:
            target_states.append(UNKNOWN)
    if target_states and all(s == DOWN for s in target_states):
        return DOWN
    if UP in target_states:
        return UP
    return UNKNOWN


@FAST
@given(observations=observation_sets())
def test_component_views_match_a_reference_model(observations: list[Observation]) -> None:
    result = views(observations)
    assert set(result) == {ADA, NTP}
    for component in (ADA, NTP):
        assert result[component].state == reference_component_state(observations, component)
        expected_evidence = [
            o
            for o in observations
            if o.component == component and (NOW - o.observed_at).total_seconds() <= STALE_AFTER_S
        ]
        assert sorted(result[component].evidence, key=repr) == sorted(expected_evidence, key=repr)


class SimulatedProcedures:
    """What the procedure service would do with each decision: a list of national procedures."""

    def __init__(self) -> None:
        self.procedures: list[dict[str, object]] = []

    def open_ones(self) -> list[dict[str, object]]:
        return [p for p in self.procedures if p["open"]]

    @property
    def current(self) -> Scenario | None:
        open_ones = self.open_ones()
        assert len(open_ones) <= 1, "more than one national procedure open"
        return open_ones[0]["scenario"] if open_ones else None  # type: ignore[return-value]

    def apply(self, decision: NationalDecision) -> None:
        open_ones = self.open_ones()
        if decision.action == Action.OPEN:
            assert not open_ones, "OPEN while a national procedure is already open"
            assert decision.previous_scenario is None
            self.procedures.append({"scenario": decision.scenario, "open": True, "events": 1})
        elif decision.action == Action.UPDATE:
            assert len(open_ones) == 1, "UPDATE without an open procedure"
            assert decision.previous_scenario == open_ones[0]["scenario"]
            assert decision.scenario != open_ones[0]["scenario"]
            open_ones[0]["scenario"] = decision.scenario
        else:
            assert len(open_ones) == 1, "CLOSE without an open procedure"
            assert decision.scenario == open_ones[0]["scenario"]
            open_ones[0]["open"] = False


@FAST
@given(steps=st.lists(st.tuples(states, states), max_size=30))
def test_driving_decisions_keeps_national_invariants(steps: list[tuple[ComponentState, ComponentState]]) -> None:
    sim = SimulatedProcedures()
    for ada, ntp in steps:
        before = sim.current
        v = views_of(ada, ntp)
        decision = decide_national(before, v)
        if decision is not None:
            assert decision.scenario in (S2, S3)
            sim.apply(decision)
        after = sim.current  # also asserts at most one national procedure is open
        # Idempotent: the same views never produce a second event for the same transition.
        assert decide_national(after, v) is None
        if ada == UNKNOWN or (ada == DOWN and ntp == UNKNOWN):
            assert decision is None
            assert after == before
        elif ada == UP:
            assert after is None
        elif ntp == DOWN:
            assert after == S3
        else:
            assert after == S2


@FAST
@given(steps=st.lists(st.tuples(st.sampled_from([UP, DOWN]), states), min_size=1, max_size=30))
def test_both_up_always_ends_with_no_open_procedure(steps: list[tuple[ComponentState, ComponentState]]) -> None:
    sim = SimulatedProcedures()
    for ada, ntp in [*steps, (UP, UP)]:
        decision = decide_national(sim.current, views_of(ada, ntp))
        if decision is not None:
            sim.apply(decision)
    assert sim.current is None
    assert decide_national(None, views_of(UP, UP)) is None


@FAST
@given(ada=states, ntp=states, current=st.sampled_from([None, S2, S3]))
def test_unknown_ada_never_opens_or_closes(ada: ComponentState, ntp: ComponentState, current: Scenario | None) -> None:
    decision = decide_national(current, views_of(ada, ntp))
    if ada == UNKNOWN:
        assert decision is None
    if decision is not None and decision.action == Action.OPEN:
        assert current is None
        assert ada == DOWN
    if decision is not None and decision.action == Action.CLOSE:
        assert current is not None
        assert ada == UP


# --- the evidence a decision records ---------------------------------------------------------------------


def test_small_evidence_is_kept_whole() -> None:
    seen = tuple(obs(f"t{n}", ADA, "d1", DOWN if n else UP, age_s=n) for n in range(5))
    assert supporting_evidence(ComponentView(ADA, DOWN, seen), limit=12) == seen


def test_large_evidence_keeps_the_newest_agreeing_and_some_dissent() -> None:
    agreeing = [obs(f"up{n}", NTP, "d1", UP, age_s=n) for n in range(30)]
    dissenting = [obs(f"down{n}", NTP, "d2", DOWN, age_s=n) for n in range(10)]
    kept = supporting_evidence(ComponentView(NTP, UP, tuple(agreeing + dissenting)), limit=12)
    assert [o.target_id for o in kept] == [f"up{n}" for n in range(9)] + ["down0", "down1", "down2"]


@FAST
@given(agree=st.integers(0, 40), dissent=st.integers(0, 40), limit=st.integers(1, 20))
def test_evidence_never_exceeds_the_limit_and_fills_it(agree: int, dissent: int, limit: int) -> None:
    seen = tuple([obs(f"a{n}", ADA, "d1", DOWN, age_s=n) for n in range(agree)]
                 + [obs(f"d{n}", ADA, "d2", UP, age_s=n) for n in range(dissent)])
    kept = supporting_evidence(ComponentView(ADA, DOWN, seen), limit=limit)
    assert len(kept) == min(limit, agree + dissent)
    assert len(set(kept)) == len(kept)


# --- how far a detector's clock is trusted ---------------------------------------------------------------


def test_an_observation_within_the_tolerated_skew_keeps_its_time() -> None:
    ahead = NOW + MAX_CLOCK_SKEW
    assert trusted_time(ahead, sent_at=NOW, now=NOW) == ahead


def test_a_future_observation_counts_as_made_when_it_was_sent() -> None:
    sent = NOW - timedelta(seconds=5)  # read late: a consumer behind its topic
    assert trusted_time(NOW + timedelta(days=3650), sent_at=sent, now=NOW) == sent


@pytest.mark.parametrize("sent_at", [None, NOW + timedelta(days=1)])
def test_without_a_trustworthy_send_time_it_counts_as_made_now(sent_at: datetime | None) -> None:
    assert trusted_time(NOW + timedelta(days=3650), sent_at=sent_at, now=NOW) == NOW
