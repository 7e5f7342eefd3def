"""One outage, one story: the engine waits for a verdict on its way (services/procedure/domain.py).

When ADA B2G and NTP fail (or return) together, whichever crosses its threshold first must not decide on
half the picture: scenario 2 ("lodge in NTP") told to every EO a few seconds before scenario 3 ("NTP is
down too") is the worst notice this product can send. The detectors publish suspicion (a streak running
towards the other state, and when its verdict is due); the engine waits for it, bounded by that due time.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from services.procedure.domain import (
    VERDICT_GRACE,
    Action,
    ActiveProcedure,
    ComponentView,
    Observation,
    advisory_wait,
    component_views,
    decide,
    decide_advisories,
    national_wait,
    trusted_verdict,
)
from shared.events import AdvisoryKind, Component, ComponentState, Origin, ProcedureState, Scenario, Scope

UP, DOWN, UNKNOWN = ComponentState.UP, ComponentState.DOWN, ComponentState.UNKNOWN
ADA, NTP = Component.ADA_B2G, Component.NTP
S2, S3 = Scenario.ADA_B2G_UNAVAILABLE, Scenario.LUCCS_UNAVAILABLE
NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
STALE_AFTER_S = 60.0


def seen(
    component: Component, state: ComponentState, *, age_s: float = 0.5, suspect: bool = False,
    due_in_s: float | None = None, detector: str = "d1", target: str | None = None,
) -> Observation:
    return Observation(
        target_id=target or component.value, component=component, detector_instance=detector, state=state,
        observed_at=NOW - timedelta(seconds=age_s), reason="ok" if state == UP else "refused", suspect=suspect,
        verdict_by=NOW + timedelta(seconds=due_in_s) if due_in_s is not None else None,
    )


def views(*observations: Observation) -> dict[Component, ComponentView]:
    return component_views(observations, now=NOW, stale_after_s=STALE_AFTER_S)


def national(scenario: Scenario) -> ActiveProcedure:
    return ActiveProcedure("p1", scenario, Scope.NATIONAL, None, ProcedureState.OPEN, Origin.DETECTED)


def actions(found: dict[Component, ComponentView], *, current: Scenario | None = None,
            now: datetime = NOW) -> list[tuple[Action, Scenario]]:
    active = [national(current)] if current else []
    return [(d.action, d.scenario) for d in decide(active=active, national=found, eos={}, confirm_mode=False, now=now)]


# --- the views carry where a component is heading ------------------------------------------------------


def test_a_suspect_up_component_heads_down_until_its_verdict() -> None:
    found = views(seen(ADA, DOWN), seen(NTP, UP, suspect=True, due_in_s=2))
    assert found[NTP].state == UP
    assert found[NTP].heading == DOWN
    assert found[NTP].verdict_by == NOW + timedelta(seconds=2)
    assert found[ADA].verdict_by is None and found[ADA].heading == DOWN


def test_a_component_with_another_target_up_is_not_heading_down() -> None:
    # Down only when every target is down: one suspect target of two does not make NTP head down.
    found = views(seen(ADA, DOWN), seen(NTP, UP, suspect=True, due_in_s=2, target="ntp-a"),
                  seen(NTP, UP, target="ntp-b"))
    assert found[NTP].heading == UP
    assert found[NTP].verdict_by is None


def test_one_suspect_vantage_point_of_three_does_not_move_the_quorum() -> None:
    found = views(seen(ADA, DOWN), seen(NTP, UP, suspect=True, due_in_s=2, detector="d1"),
                  seen(NTP, UP, detector="d2"), seen(NTP, UP, detector="d3"))
    assert found[NTP].heading == UP and found[NTP].verdict_by is None


def test_a_verdict_is_never_awaited_beyond_staleness() -> None:
    found = views(seen(ADA, DOWN), seen(NTP, UP, age_s=10, suspect=True, due_in_s=3600))
    assert found[NTP].verdict_by == NOW - timedelta(seconds=10) + timedelta(seconds=STALE_AFTER_S)


# --- joint failure ---------------------------------------------------------------------------------------


def test_ada_down_while_ntp_is_suspect_waits_for_ntp() -> None:
    found = views(seen(ADA, DOWN), seen(NTP, UP, suspect=True, due_in_s=2))
    assert actions(found) == []
    assert national_wait(None, found, now=NOW) == NOW + timedelta(seconds=2) + VERDICT_GRACE


def test_then_ntp_down_opens_scenario_3_directly() -> None:
    assert actions(views(seen(ADA, DOWN), seen(NTP, DOWN))) == [(Action.OPEN, S3)]


def test_a_suspect_ntp_that_recovers_lets_scenario_2_open_once_the_verdict_is_due() -> None:
    found = views(seen(ADA, DOWN), seen(NTP, UP, suspect=True, due_in_s=2))
    after = NOW + timedelta(seconds=2) + VERDICT_GRACE
    assert actions(found, now=after - timedelta(milliseconds=1)) == []
    assert actions(found, now=after) == [(Action.OPEN, S2)]


def test_ada_failing_alone_opens_scenario_2_at_once() -> None:
    found = views(seen(ADA, DOWN), seen(NTP, UP))
    assert national_wait(None, found, now=NOW) is None
    assert actions(found) == [(Action.OPEN, S2)]


def test_without_a_clock_the_engine_does_not_wait() -> None:
    found = views(seen(ADA, DOWN), seen(NTP, UP, suspect=True, due_in_s=2))
    decisions = decide(active=[], national=found, eos={}, confirm_mode=False)
    assert [(d.action, d.scenario) for d in decisions] == [(Action.OPEN, S2)]


def test_an_unknown_component_never_delays_a_decision() -> None:
    found = views(seen(ADA, DOWN), seen(NTP, UP, age_s=STALE_AFTER_S + 1, suspect=True, due_in_s=5))
    assert found[NTP].state == UNKNOWN
    assert national_wait(None, found, now=NOW) is None


def test_a_suspect_ntp_during_scenario_2_changes_nothing_yet() -> None:
    found = views(seen(ADA, DOWN), seen(NTP, UP, suspect=True, due_in_s=2))
    assert national_wait(S2, found, now=NOW) is None  # nothing to decide: scenario 2 is what is called for
    assert actions(found, current=S2) == []


# --- joint return ----------------------------------------------------------------------------------------


def test_ntp_back_while_ada_is_recovering_waits_instead_of_stepping_to_2() -> None:
    found = views(seen(ADA, DOWN, suspect=True, due_in_s=1.5), seen(NTP, UP))
    assert actions(found, current=S3) == []
    assert actions(views(seen(ADA, UP), seen(NTP, UP)), current=S3) == [(Action.CLOSE, S3)]


def test_ntp_back_while_ada_stays_down_steps_to_2_after_the_verdict_is_due() -> None:
    found = views(seen(ADA, DOWN, suspect=True, due_in_s=1.5), seen(NTP, UP))
    after = NOW + timedelta(seconds=1.5) + VERDICT_GRACE
    assert actions(found, current=S3, now=after) == [(Action.UPDATE, S2)]


# --- the Servicedesk's NTP-only advisory tells one story too ---------------------------------------------


def test_ntp_down_while_ada_is_suspect_raises_no_ntp_only_advisory_yet() -> None:
    found = views(seen(ADA, UP, suspect=True, due_in_s=2), seen(NTP, DOWN))
    assert advisory_wait(found, now=NOW) == NOW + timedelta(seconds=2) + VERDICT_GRACE
    kinds = [c.kind for c in decide_advisories(active=[], national=found, blind_allowed=True, now=NOW)]
    assert AdvisoryKind.NTP_UNAVAILABLE not in kinds
    later = NOW + timedelta(seconds=2) + VERDICT_GRACE
    kinds = [c.kind for c in decide_advisories(active=[], national=found, blind_allowed=True, now=later)]
    assert kinds == [AdvisoryKind.NTP_UNAVAILABLE]


def test_ntp_down_with_ada_steady_raises_the_advisory_at_once() -> None:
    found = views(seen(ADA, UP), seen(NTP, DOWN))
    assert advisory_wait(found, now=NOW) is None
    changes = decide_advisories(active=[], national=found, blind_allowed=True, now=NOW)
    assert [c.kind for c in changes] == [AdvisoryKind.NTP_UNAVAILABLE]


# --- every interleaving of two streaks -------------------------------------------------------------------
# A small model of a detector (failure threshold 3, success threshold 2, a retry pace while a streak
# runs) probes ADA B2G and NTP; the engine decides at every observation it reads and whenever a wait ends.

FAILURE, SUCCESS = 3, 2
RETRY_S, TIMEOUT_S = 1.0, 1.0


@dataclass
class Target:
    component: Component
    outcomes: list[bool]
    """The outcome of each probe from the moment of the fault on."""
    start_s: float
    latencies: list[float]
    state: ComponentState = UP
    streak: int = 0
    streak_ok: bool = True
    probes: list[tuple[float, Observation]] = field(default_factory=list)

    def run(self) -> None:
        """Probe until the outcomes are used up; every probe's observation is published at once."""
        t = self.start_s
        for n, ok in enumerate(self.outcomes):
            t += self.latencies[n % len(self.latencies)]
            self.streak = self.streak + 1 if ok == self.streak_ok else 1
            self.streak_ok = ok
            threshold = SUCCESS if ok else FAILURE
            if (UP if ok else DOWN) != self.state and self.streak >= threshold:
                self.state = UP if ok else DOWN
            suspect = (UP if ok else DOWN) != self.state
            due = t + (threshold - self.streak) * (RETRY_S + TIMEOUT_S) if suspect else None
            self.probes.append((t, Observation(
                target_id=self.component.value, component=self.component, detector_instance="d1",
                state=self.state, observed_at=NOW + timedelta(seconds=t), reason="x", suspect=suspect,
                verdict_by=NOW + timedelta(seconds=due) if due is not None else None,
            )))
            t += RETRY_S if suspect else 5.0


def run_engine(
    *targets: Target, start: Scenario | None, states: tuple[ComponentState, ComponentState]
) -> Decided:
    """Feed every observation in time order (read 20 ms after it was made) and every wait's end."""
    latest = {
        ADA: Observation("ada_b2g", ADA, "d1", states[0], NOW - timedelta(seconds=1), "x"),
        NTP: Observation("ntp", NTP, "d1", states[1], NOW - timedelta(seconds=1), "x"),
    }
    arrivals = sorted(((t + 0.02, o) for target in targets for t, o in target.probes), key=lambda a: a[0])
    current, decided = start, []  # type: Scenario | None, Decided
    pending: datetime | None = None
    for arrival_s, observation in arrivals:
        arrival = NOW + timedelta(seconds=arrival_s)
        while pending is not None and pending <= arrival:  # the service's recheck fires before this read
            current, pending = _step(latest, current, decided, pending)
        latest[observation.component] = observation
        current, pending = _step(latest, current, decided, arrival)
    while pending is not None:
        current, pending = _step(latest, current, decided, pending)
    return decided


Decided = list[tuple[Action, Scenario]]


def _step(
    latest: dict[Component, Observation], current: Scenario | None, decided: Decided, now: datetime
) -> tuple[Scenario | None, datetime | None]:
    found = component_views(latest.values(), now=now, stale_after_s=STALE_AFTER_S)
    for d in decide(active=[national(current)] if current else [], national=found, eos={}, confirm_mode=False,
                    now=now):
        decided.append((d.action, d.scenario))
        current = None if d.action == Action.CLOSE else d.scenario
    return current, national_wait(current, found, now=now)


latencies = st.lists(st.floats(min_value=0.001, max_value=TIMEOUT_S), min_size=1, max_size=6)


@st.composite
def starts(draw: st.DrawFn, first_latencies: tuple[list[float], list[float]]) -> tuple[float, float]:
    """When each channel's first probe after the fault starts. The detector probes the other national
    component at once when one turns suspect, so the second starts at the latest when the first's result is
    in; before that, anywhere (its own schedule)."""
    ada_first = draw(st.booleans())
    lead_latency = first_latencies[0 if ada_first else 1][0]
    other = draw(st.floats(min_value=0.0, max_value=lead_latency))
    return (0.0, other) if ada_first else (other, 0.0)


@st.composite
def timings(draw: st.DrawFn) -> tuple[float, float, list[float], list[float]]:
    ada_lat, ntp_lat = draw(latencies), draw(latencies)
    ada_at, ntp_at = draw(starts((ada_lat, ntp_lat)))
    return ada_at, ntp_at, ada_lat, ntp_lat


@settings(max_examples=300, deadline=None, database=None)
@given(timings())
def test_a_joint_failure_opens_scenario_3_and_nothing_else(
    timing: tuple[float, float, list[float], list[float]]
) -> None:
    ada_at, ntp_at, ada_lat, ntp_lat = timing
    ada = Target(ADA, [False] * 6, ada_at, ada_lat)
    ntp = Target(NTP, [False] * 6, ntp_at, ntp_lat)
    ada.run()
    ntp.run()
    assert run_engine(ada, ntp, start=None, states=(UP, UP)) == [(Action.OPEN, S3)]


@settings(max_examples=300, deadline=None, database=None)
@given(timings())
def test_a_joint_return_closes_scenario_3_directly(
    timing: tuple[float, float, list[float], list[float]]
) -> None:
    ada_at, ntp_at, ada_lat, ntp_lat = timing
    ada = Target(ADA, [True] * 4, ada_at, ada_lat, state=DOWN, streak_ok=False)
    ntp = Target(NTP, [True] * 4, ntp_at, ntp_lat, state=DOWN, streak_ok=False)
    ada.run()
    ntp.run()
    assert run_engine(ada, ntp, start=S3, states=(DOWN, DOWN)) == [(Action.CLOSE, S3)]


@settings(max_examples=300, deadline=None, database=None)
@given(timings(), st.integers(min_value=1, max_value=FAILURE - 1))
def test_a_suspect_ntp_that_recovers_lets_scenario_2_open_once(
    timing: tuple[float, float, list[float], list[float]], blips: int
) -> None:
    ada_at, ntp_at, ada_lat, ntp_lat = timing
    ada = Target(ADA, [False] * 6, ada_at, ada_lat)
    ntp = Target(NTP, [False] * blips + [True] * 4, ntp_at, ntp_lat)
    ada.run()
    ntp.run()
    assert run_engine(ada, ntp, start=None, states=(UP, UP)) == [(Action.OPEN, S2)]


@settings(max_examples=300, deadline=None, database=None)
@given(timings(), st.integers(min_value=1, max_value=SUCCESS - 1))
def test_a_suspect_ada_that_stays_down_steps_to_2_once(
    timing: tuple[float, float, list[float], list[float]], blips: int
) -> None:
    ada_at, ntp_at, ada_lat, ntp_lat = timing
    ada = Target(ADA, [True] * blips + [False] * 4, ada_at, ada_lat, state=DOWN, streak_ok=False)
    ntp = Target(NTP, [True] * 4, ntp_at, ntp_lat, state=DOWN, streak_ok=False)
    ada.run()
    ntp.run()
    assert run_engine(ada, ntp, start=S3, states=(DOWN, DOWN)) == [(Action.UPDATE, S2)]


@pytest.mark.parametrize("blips", [0, 1, 2])
def test_ntp_blips_during_an_ada_outage_never_reach_eos_twice(blips: int) -> None:
    ada = Target(ADA, [False] * 8, 0.0, [0.01])
    ntp = Target(NTP, [True] * 3 + [False] * blips + [True] * 3, 0.5, [0.01])
    ada.run()
    ntp.run()
    assert run_engine(ada, ntp, start=None, states=(UP, UP)) == [(Action.OPEN, S2)]


def test_a_skewed_detectors_verdict_moves_with_its_observation() -> None:
    ahead = NOW + timedelta(minutes=10)
    moved = trusted_verdict(ahead + timedelta(seconds=3), observed_at=ahead, trusted_at=NOW)
    assert moved == NOW + timedelta(seconds=3)
    assert trusted_verdict(None, observed_at=ahead, trusted_at=NOW) is None
