"""The scenario engine: which national fallback scenario applies, given what the detectors see.

Pure: no I/O, the clock comes in as ``now``. The service feeds it the latest observation per
(target, detector instance) and acts on the decision it returns.

Rules (product section 3):
- a target's state is the majority view of its fresh vantage points (strict majority, else unknown);
- a component is down only when every one of its targets is down, up when any target is up;
- no fresh observation means unknown, and unknown never opens or closes anything;
- ADA B2G down and NTP up -> scenario 2; both down -> scenario 3; ADA B2G up -> no national procedure
  (an NTP-only outage is not a fallback scenario).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum

from shared.events import Component, ComponentState, Scenario


@dataclass(frozen=True)
class Observation:
    """The latest state one detector instance reported for one target."""

    target_id: str
    component: Component
    detector_instance: str
    state: ComponentState
    observed_at: datetime
    reason: str


@dataclass(frozen=True)
class ComponentView:
    component: Component
    state: ComponentState
    evidence: tuple[Observation, ...]


def _majority(states: Sequence[ComponentState]) -> ComponentState:
    for candidate in (ComponentState.DOWN, ComponentState.UP):
        if sum(1 for s in states if s == candidate) * 2 > len(states):
            return candidate
    return ComponentState.UNKNOWN


def component_views(
    observations: Iterable[Observation], *, now: datetime, stale_after_s: float
) -> dict[Component, ComponentView]:
    """The state of each national component (ADA B2G, NTP) with the fresh observations behind it."""
    fresh_after = now - timedelta(seconds=stale_after_s)
    by_target: dict[tuple[Component, str], list[Observation]] = defaultdict(list)
    for obs in observations:
        if obs.component in (Component.ADA_B2G, Component.NTP):
            by_target[(obs.component, obs.target_id)].append(obs)

    views: dict[Component, ComponentView] = {}
    for component in (Component.ADA_B2G, Component.NTP):
        target_states: list[ComponentState] = []
        evidence: list[Observation] = []
        for (comp, _target), target_obs in sorted(by_target.items()):
            if comp != component:
                continue
            fresh = [o for o in target_obs if o.observed_at >= fresh_after]
            target_states.append(_majority([o.state for o in fresh]) if fresh else ComponentState.UNKNOWN)
            evidence.extend(fresh)
        if target_states and all(s == ComponentState.DOWN for s in target_states):
            state = ComponentState.DOWN
        elif any(s == ComponentState.UP for s in target_states):
            state = ComponentState.UP
        else:
            state = ComponentState.UNKNOWN
        views[component] = ComponentView(component, state, tuple(evidence))
    return views


class Action(StrEnum):
    OPEN = "open"
    UPDATE = "update"
    CLOSE = "close"


@dataclass(frozen=True)
class NationalDecision:
    action: Action
    scenario: Scenario
    previous_scenario: Scenario | None
    reason: str


_REASONS = {
    Scenario.ADA_B2G_UNAVAILABLE: "ADA B2G (AS4) is unavailable while NTP is available",
    Scenario.LUCCS_UNAVAILABLE: "ADA B2G (AS4) and NTP are both unavailable",
}


def desired_national_scenario(ada_b2g: ComponentState, ntp: ComponentState) -> Scenario | None:
    """The national scenario the component states call for; None means no national procedure."""
    if ada_b2g != ComponentState.DOWN:
        return None
    if ntp == ComponentState.DOWN:
        return Scenario.LUCCS_UNAVAILABLE
    return Scenario.ADA_B2G_UNAVAILABLE


def decide_national(
    current: Scenario | None, views: dict[Component, ComponentView]
) -> NationalDecision | None:
    """What to do with the national procedure (``current`` is the open one's scenario, or None)."""
    ada = views[Component.ADA_B2G].state
    ntp = views[Component.NTP].state
    # Unknown decides nothing: a blind detector is not a dead LUCCS, nor a recovered one.
    if ada == ComponentState.UNKNOWN or (ada == ComponentState.DOWN and ntp == ComponentState.UNKNOWN):
        return None
    desired = desired_national_scenario(ada, ntp)
    if desired == current:
        return None
    if current is None:
        assert desired is not None
        return NationalDecision(Action.OPEN, desired, None, _REASONS[desired])
    if desired is None:
        reason = "ADA B2G (AS4) is available again"
        if ntp == ComponentState.DOWN:
            reason += "; NTP is still unavailable (advisory to the Servicedesk, not a fallback scenario)"
        return NationalDecision(Action.CLOSE, current, None, reason)
    return NationalDecision(Action.UPDATE, desired, current, _REASONS[desired])
