"""The scenario engine: which fallback procedures and advisories the observations call for.

Pure: no I/O, the clock comes in as ``now``. The service feeds it the latest observation per
(target, detector instance) and the active procedures, and carries out the decisions it returns.

Rules (product section 3):
- a target's state is the quorum view of its fresh vantage points (default strict majority, else unknown);
- a component is down only when every one of its targets is down, up when any target is up;
- no fresh observation means unknown, and unknown never opens or closes anything;
- ADA B2G down and NTP up -> scenario 2; both down -> scenario 3; ADA B2G up -> no national procedure
  (an NTP-only outage is an advisory for the Servicedesk, not a fallback scenario);
- an EO whose own AS4 endpoint is down -> scenario 1 for that EO, beside any national procedure;
- in ``confirm`` mode a detected outage makes a *proposed* procedure that an operator confirms; a
  recovery before confirmation withdraws it;
- one outage, one story: when the other national component is *suspect* (its detector saw a probe disagree
  with its state and a verdict is on its way), a national change that the verdict would make different
  waits for it, at most until the verdict is due (:func:`national_wait`), so a joint failure opens
  scenario 3 directly and a joint return closes directly;
- a procedure declared by an operator is left alone by the probes unless it was declared ``auto_close``.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from enum import StrEnum

from shared.events import (
    AdvisoryKind,
    Component,
    ComponentState,
    DetectedReason,
    Origin,
    ProcedureState,
    Scenario,
    Scope,
)

NATIONAL_COMPONENTS = (Component.ADA_B2G, Component.NTP)


@dataclass(frozen=True)
class Observation:
    """The latest state one detector instance reported for one target."""

    target_id: str
    component: Component
    detector_instance: str
    state: ComponentState
    observed_at: datetime
    reason: str
    eori: str | None = None
    suspect: bool = False
    """The latest probe disagrees with ``state``: a streak towards the other state is running."""
    verdict_by: datetime | None = None
    """While suspect: when that streak reaches its threshold at the latest, if every probe keeps its outcome."""

    @property
    def leaning(self) -> ComponentState:
        """The state this observation is heading for: the other one while suspect, else its state."""
        if not self.suspect:
            return self.state
        return {ComponentState.UP: ComponentState.DOWN, ComponentState.DOWN: ComponentState.UP}.get(
            self.state, self.state
        )


@dataclass(frozen=True)
class ComponentView:
    component: Component
    state: ComponentState
    evidence: tuple[Observation, ...]
    leaning: ComponentState | None = None
    """The state the component is heading for if every suspect observation's streak completes (None: ``state``)."""
    verdict_by: datetime | None = None
    """When the last of those verdicts is due at the latest, as the detectors said (None: none pending)."""

    @property
    def heading(self) -> ComponentState:
        return self.state if self.leaning is None else self.leaning


def _quorum_state(states: Sequence[ComponentState], quorum: float | None) -> ComponentState:
    """The state enough fresh vantage points agree on: a strict majority, or at least the ``quorum`` share."""
    needed = len(states) // 2 + 1 if quorum is None else max(1, math.ceil(len(states) * quorum))
    for candidate in (ComponentState.DOWN, ComponentState.UP):
        if sum(1 for s in states if s == candidate) >= needed:
            return candidate
    return ComponentState.UNKNOWN


def _fold(target_states: Sequence[ComponentState]) -> ComponentState:
    if target_states and all(s == ComponentState.DOWN for s in target_states):
        return ComponentState.DOWN
    if any(s == ComponentState.UP for s in target_states):
        return ComponentState.UP
    return ComponentState.UNKNOWN


def _views(
    observations: Iterable[Observation], *, now: datetime, stale_after_s: float, quorum: float | None
) -> dict[str, tuple[ComponentState, tuple[Observation, ...]]]:
    """State and fresh evidence per group key (the component name, or the EORI for EO endpoints)."""
    fresh_after = now - timedelta(seconds=stale_after_s)
    by_target: dict[tuple[str, str], list[Observation]] = defaultdict(list)
    for obs in observations:
        group = obs.eori if obs.component == Component.EO_B2G else obs.component.value
        if group:
            by_target[(group, obs.target_id)].append(obs)
    target_states: dict[str, list[ComponentState]] = defaultdict(list)
    evidence: dict[str, list[Observation]] = defaultdict(list)
    for (group, _target), target_obs in sorted(by_target.items()):
        fresh = [o for o in target_obs if o.observed_at >= fresh_after]
        target_states[group].append(
            _quorum_state([o.state for o in fresh], quorum) if fresh else ComponentState.UNKNOWN
        )
        evidence[group].extend(fresh)
    return {group: (_fold(states), tuple(evidence[group])) for group, states in target_states.items()}


def _pending_verdict(
    evidence: Sequence[Observation], *, stale_after_s: float
) -> tuple[list[Observation], datetime | None]:
    """The observations as they will be once every suspect streak completes, and when the last verdict is due.

    A verdict is never awaited beyond the moment its observation goes stale: a detector that falls silent
    mid-streak delays nothing for longer than silence takes to show."""
    heading: list[Observation] = []
    due: datetime | None = None
    for o in evidence:
        if not o.suspect or o.leaning == o.state:
            heading.append(o)
            continue
        heading.append(replace(o, state=o.leaning, suspect=False))
        stale_at = o.observed_at + timedelta(seconds=stale_after_s)
        by = min(o.verdict_by, stale_at) if o.verdict_by is not None else stale_at
        due = by if due is None else max(due, by)
    return heading, due


MAX_CLOCK_SKEW = timedelta(seconds=30)
"""How far ahead of this service's clock a detector's clock may run before its times are not trusted."""


def trusted_time(observed_at: datetime, *, sent_at: datetime | None, now: datetime) -> datetime:
    """When an observation counts as made. A detector whose clock runs far ahead must not pin a state for
    ever: beyond the tolerated skew it counts as made when it was sent (the message's timestamp), unless
    that is missing or ahead too (the skewed producer stamped it), and then now. Not simply now: read by a
    consumer behind its topic, it would then outrank observations sent after it."""
    if observed_at <= now + MAX_CLOCK_SKEW:
        return observed_at
    if sent_at is not None and sent_at <= now + MAX_CLOCK_SKEW:
        return min(sent_at, now)
    return now


def trusted_verdict(verdict_by: datetime | None, *, observed_at: datetime, trusted_at: datetime) -> datetime | None:
    """A suspect observation's verdict time, moved as its observation time was by :func:`trusted_time` (a
    detector clock running ahead skews both by the same amount)."""
    if verdict_by is None:
        return None
    return verdict_by - (observed_at - trusted_at)


MAX_EVIDENCE = 12
"""Observations recorded as a decision's evidence per component: enough to show why, with the dissent."""


def supporting_evidence(view: ComponentView, limit: int = MAX_EVIDENCE) -> tuple[Observation, ...]:
    """The observations to record for ``view``, at most ``limit`` (a component watched through hundreds of
    targets would otherwise bloat every event): the newest agreeing with its state, and up to a quarter of
    the places the newest dissenting ones."""
    if len(view.evidence) <= limit:
        return view.evidence
    newest = sorted(view.evidence, key=lambda o: o.observed_at, reverse=True)
    agree = [o for o in newest if o.state == view.state]
    dissent = [o for o in newest if o.state != view.state]
    dissent_kept = max(min(len(dissent), limit // 4), limit - len(agree))
    return tuple(agree[: limit - dissent_kept] + dissent[:dissent_kept])


def component_views(
    observations: Iterable[Observation], *, now: datetime, stale_after_s: float, quorum: float | None = None
) -> dict[Component, ComponentView]:
    """The state of each national component (ADA B2G, NTP) with the fresh observations behind it.

    ``quorum`` None means a strict majority of the fresh vantage points; a fraction means at least that share.
    """
    national = [o for o in observations if o.component in NATIONAL_COMPONENTS]
    found = _views(national, now=now, stale_after_s=stale_after_s, quorum=quorum)
    views: dict[Component, ComponentView] = {}
    for c in NATIONAL_COMPONENTS:
        state, evidence = found.get(c.value, (ComponentState.UNKNOWN, ()))
        heading, due = _pending_verdict(evidence, stale_after_s=stale_after_s)
        leaning: ComponentState | None = None
        if due is not None:
            # The evidence is fresh by construction: judged again at ``now`` it gives the state it heads for.
            leaning = _views(heading, now=now, stale_after_s=stale_after_s, quorum=quorum).get(
                c.value, (ComponentState.UNKNOWN, ())
            )[0]
        views[c] = ComponentView(c, state, evidence, leaning, due if leaning not in (None, state) else None)
    return views


def eo_views(
    observations: Iterable[Observation], *, now: datetime, stale_after_s: float, quorum: float | None = None
) -> dict[str, ComponentView]:
    """The state of each EO's own B2G endpoint, by EORI."""
    eo = [o for o in observations if o.component == Component.EO_B2G and o.eori]
    found = _views(eo, now=now, stale_after_s=stale_after_s, quorum=quorum)
    return {eori: ComponentView(Component.EO_B2G, state, ev) for eori, (state, ev) in found.items()}


class Action(StrEnum):
    PROPOSE = "propose"
    OPEN = "open"
    CONFIRM = "confirm"
    UPDATE = "update"
    CLOSE = "close"
    WITHDRAW = "withdraw"


@dataclass(frozen=True)
class ActiveProcedure:
    """What the engine needs to know of an open or proposed procedure."""

    procedure_id: str
    scenario: Scenario
    scope: Scope
    eori: str | None
    state: ProcedureState
    origin: Origin
    auto_close: bool = True


@dataclass(frozen=True)
class Decision:
    """Something to do: ``procedure_id`` is None when a new procedure is to be created."""

    action: Action
    scenario: Scenario
    scope: Scope
    reason: str
    procedure_id: str | None = None
    previous_scenario: Scenario | None = None
    eori: str | None = None
    origin: Origin = Origin.DETECTED
    maintenance_id: str | None = None
    """The maintenance window a planned procedure comes from (set on its opening)."""


@dataclass(frozen=True)
class NationalDecision:
    action: Action
    scenario: Scenario
    previous_scenario: Scenario | None
    reason: str


_REASONS = {
    Scenario.ADA_B2G_UNAVAILABLE: DetectedReason.ADA_B2G_DOWN,
    Scenario.LUCCS_UNAVAILABLE: DetectedReason.LUCCS_DOWN,
    Scenario.EO_B2G_UNAVAILABLE: DetectedReason.EO_B2G_DOWN,
}


def desired_national_scenario(ada_b2g: ComponentState, ntp: ComponentState) -> Scenario | None:
    """The national scenario the component states call for; None means no national procedure."""
    if ada_b2g != ComponentState.DOWN:
        return None
    if ntp == ComponentState.DOWN:
        return Scenario.LUCCS_UNAVAILABLE
    return Scenario.ADA_B2G_UNAVAILABLE


VERDICT_GRACE = timedelta(seconds=1)
"""How long after its due time a verdict is still awaited: the detector's publication and this service's
read of it take time, and a probe that fails by timing out decides exactly at the due time."""


def national_wait(
    current: Scenario | None, views: dict[Component, ComponentView], *, now: datetime
) -> datetime | None:
    """Until when a national change waits for a verdict on its way, or None when it need not wait.

    A change waits when the component states call for one (``current`` is not what they call for) and the
    verdicts of the suspect components, once in, would call for another outcome: ADA B2G down while NTP's
    probes have started failing would open scenario 2 and then, a few seconds later, move it to 3. The wait
    ends at the latest verdict's due time; after that the engine decides on what it knows. Unknown never
    waits: it decides nothing anyway.
    """
    ada, ntp = views[Component.ADA_B2G], views[Component.NTP]
    pending = [v.verdict_by + VERDICT_GRACE for v in (ada, ntp) if v.verdict_by is not None]
    pending = [at for at in pending if at > now]
    if not pending:
        return None
    if ComponentState.UNKNOWN in (ada.state, ntp.state, ada.heading, ntp.heading):
        return None
    called_for = desired_national_scenario(ada.state, ntp.state)
    if called_for == current:
        return None
    if desired_national_scenario(ada.heading, ntp.heading) == called_for:
        return None
    return max(pending)


def advisory_wait(views: dict[Component, ComponentView], *, now: datetime) -> datetime | None:
    """Until when an NTP-only advisory waits: NTP down while ADA B2G's probes have started failing too is
    most likely one outage of LUCCS on its way, not an NTP-only one (and a joint return likewise)."""
    ada, ntp = views[Component.ADA_B2G], views[Component.NTP]
    due = ada.verdict_by + VERDICT_GRACE if ada.verdict_by is not None else None
    if due is None or due <= now or ComponentState.UNKNOWN in (ntp.state, ada.heading):
        return None
    ntp_only_now = ada.state == ComponentState.UP and ntp.state == ComponentState.DOWN
    ntp_only_after = ada.heading == ComponentState.UP and ntp.heading == ComponentState.DOWN
    return due if ntp_only_now != ntp_only_after else None


def decide_national(current: Scenario | None, views: dict[Component, ComponentView]) -> NationalDecision | None:
    """What to do with the open national procedure (``current`` is its scenario, or None), in auto mode."""
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
        ntp_down = ntp == ComponentState.DOWN
        reason = DetectedReason.ADA_B2G_BACK_NTP_DOWN if ntp_down else DetectedReason.ADA_B2G_BACK
        return NationalDecision(Action.CLOSE, current, None, reason.value)
    return NationalDecision(Action.UPDATE, desired, current, _REASONS[desired])


def _follows_probes(procedure: ActiveProcedure) -> bool:
    return procedure.origin == Origin.DETECTED or procedure.auto_close


def decide(
    *,
    active: Sequence[ActiveProcedure],
    national: dict[Component, ComponentView],
    eos: dict[str, ComponentView],
    confirm_mode: bool,
    now: datetime | None = None,
) -> list[Decision]:
    """Every change the current observations call for, national and per EO.

    With ``now``, a national change waits while a verdict on its way would change it (:func:`national_wait`).
    """
    decisions: list[Decision] = []
    current = next((p for p in active if p.scope == Scope.NATIONAL), None)
    scenario = current.scenario if current else None
    waiting = now is not None and national_wait(scenario, national, now=now) is not None
    if (current is None or _follows_probes(current)) and not waiting:
        found = decide_national(scenario, national)
        if found is not None:
            decisions.append(_national(found, current, confirm_mode))
    by_eori = {p.eori: p for p in active if p.scope == Scope.EO}
    for eori, view in sorted(eos.items()):
        decision = _decide_eo(eori, view.state, by_eori.get(eori), confirm_mode)
        if decision is not None:
            decisions.append(decision)
    return decisions


def _national(found: NationalDecision, current: ActiveProcedure | None, confirm_mode: bool) -> Decision:
    action = found.action
    if current is None and confirm_mode:
        action = Action.PROPOSE
    elif current is not None and current.state == ProcedureState.PROPOSED and action == Action.CLOSE:
        action = Action.WITHDRAW
    return Decision(
        action=action,
        scenario=found.scenario,
        scope=Scope.NATIONAL,
        reason=found.reason if action != Action.WITHDRAW else f"{found.reason}: proposal withdrawn",
        procedure_id=current.procedure_id if current else None,
        previous_scenario=found.previous_scenario,
    )


def _decide_eo(
    eori: str, state: ComponentState, current: ActiveProcedure | None, confirm_mode: bool
) -> Decision | None:
    scenario = Scenario.EO_B2G_UNAVAILABLE
    if state == ComponentState.DOWN and current is None:
        action = Action.PROPOSE if confirm_mode else Action.OPEN
        return Decision(action, scenario, Scope.EO, _REASONS[scenario], eori=eori)
    if state == ComponentState.UP and current is not None and _follows_probes(current):
        action = Action.WITHDRAW if current.state == ProcedureState.PROPOSED else Action.CLOSE
        reason = DetectedReason.EO_B2G_BACK.value
        return Decision(action, scenario, Scope.EO, reason, procedure_id=current.procedure_id, eori=eori)
    return None


# --- commands from people: EOs reporting on themselves, operators ---------------------------------------


class Rejected(Exception):
    """A command that cannot be carried out in the current state; the message says why (HTTP 409)."""


def broadcast_refusal(state: ProcedureState) -> str | None:
    """Why a broadcast about a procedure in ``state`` cannot be sent (None: it can). Only an open procedure
    is in force: EOs never heard of a proposed one, and a closed one is over."""
    if state == ProcedureState.OPEN:
        return None
    if state == ProcedureState.PROPOSED:
        return "the procedure is only proposed: EOs have not been told of it (confirm it first)"
    return "the procedure is closed: a broadcast goes out only during an open procedure"


def eo_report(*, eori: str, down: bool, current: ActiveProcedure | None, detail: str | None) -> Decision | None:
    """An EO says its own B2G system is down or back up. Its report is the notice to the Servicedesk.

    A report that changes nothing (down while a procedure is open, up while none is) returns None.
    """
    suffix = f": {detail}" if detail else ""
    scenario = Scenario.EO_B2G_UNAVAILABLE
    if down and current is None:
        return Decision(Action.OPEN, scenario, Scope.EO, f"reported by the EO{suffix}", eori=eori,
                        origin=Origin.EO_REPORT)
    if down and current is not None and current.state == ProcedureState.PROPOSED:
        return Decision(Action.CONFIRM, scenario, Scope.EO, f"confirmed by the EO's own report{suffix}",
                        procedure_id=current.procedure_id, eori=eori)
    if not down and current is not None:
        action = Action.WITHDRAW if current.state == ProcedureState.PROPOSED else Action.CLOSE
        return Decision(action, scenario, Scope.EO, f"the EO reports its B2G system restored{suffix}",
                        procedure_id=current.procedure_id, eori=eori)
    return None


def declare(
    *, scenario: Scenario, eori: str | None, reason: str, active: Sequence[ActiveProcedure]
) -> Decision:
    """An operator opens a procedure by hand (it takes effect at once, no confirmation needed)."""
    if scenario == Scenario.EO_B2G_UNAVAILABLE:
        if not eori:
            raise ValueError("scenario EO_B2G_UNAVAILABLE needs the eori of the EO concerned")
        clash = next((p for p in active if p.scope == Scope.EO and p.eori == eori), None)
        scope = Scope.EO
    else:
        if eori:
            raise ValueError(f"scenario {scenario.value} is national: do not give an eori")
        clash = next((p for p in active if p.scope == Scope.NATIONAL), None)
        scope = Scope.NATIONAL
    if clash is not None:
        hint = "confirm or close it" if clash.state == ProcedureState.PROPOSED else "update or close it"
        raise Rejected(
            f"procedure {clash.procedure_id} ({clash.scenario.value}) is already {clash.state.value}: {hint}"
        )
    return Decision(Action.OPEN, scenario, scope, reason, eori=eori, origin=Origin.OPERATOR)


def confirm(*, procedure: ActiveProcedure | None, reason: str) -> Decision:
    """An operator confirms a proposed procedure: it opens and EOs are told."""
    if procedure is None or procedure.state != ProcedureState.PROPOSED:
        state = procedure.state.value if procedure else "closed"
        raise Rejected(f"only a proposed procedure can be confirmed; this one is {state}")
    return Decision(Action.CONFIRM, procedure.scenario, procedure.scope, reason,
                    procedure_id=procedure.procedure_id, eori=procedure.eori)


def close(*, procedure: ActiveProcedure | None, reason: str) -> Decision:
    """An operator closes an open procedure, or dismisses a proposed one."""
    if procedure is None:
        raise Rejected("the procedure is already closed")
    action = Action.WITHDRAW if procedure.state == ProcedureState.PROPOSED else Action.CLOSE
    return Decision(action, procedure.scenario, procedure.scope, reason, procedure_id=procedure.procedure_id,
                    eori=procedure.eori)


# --- advisories: for the Servicedesk and ops, never for EOs ---------------------------------------------


@dataclass(frozen=True)
class AdvisoryChange:
    kind: AdvisoryKind
    raise_it: bool
    components: tuple[Component, ...]
    reason: str


def decide_advisories(
    *, active: Iterable[AdvisoryKind], national: dict[Component, ComponentView], blind_allowed: bool,
    now: datetime | None = None,
) -> list[AdvisoryChange]:
    """Advisories to raise or clear: NTP down while ADA B2G is up; a national component nobody sees.

    ``blind_allowed`` is False during the first ``stale_after_s`` after start, when silence is expected.
    With ``now``, the NTP-only advisory waits while ADA B2G's verdict on its way would change it.
    """
    active = set(active)
    changes: list[AdvisoryChange] = []
    ada, ntp = national[Component.ADA_B2G].state, national[Component.NTP].state
    ntp_only = ada == ComponentState.UP and ntp == ComponentState.DOWN
    if now is not None and advisory_wait(national, now=now) is not None:
        pass  # one outage, one story: the Servicedesk hears of it once ADA B2G's verdict is in
    elif ntp_only and AdvisoryKind.NTP_UNAVAILABLE not in active:
        changes.append(AdvisoryChange(AdvisoryKind.NTP_UNAVAILABLE, True, (Component.NTP,),
                                      "NTP is unavailable while ADA B2G works: not a fallback scenario"))
    elif not ntp_only and AdvisoryKind.NTP_UNAVAILABLE in active and ComponentState.UNKNOWN not in (ada, ntp):
        changes.append(AdvisoryChange(AdvisoryKind.NTP_UNAVAILABLE, False, (Component.NTP,),
                                      "NTP is available again" if ntp == ComponentState.UP
                                      else "superseded by a fallback procedure"))
    blind = tuple(c for c in NATIONAL_COMPONENTS if national[c].state == ComponentState.UNKNOWN)
    if blind and blind_allowed and AdvisoryKind.MONITORING_BLIND not in active:
        names = ", ".join(c.value for c in blind)
        changes.append(AdvisoryChange(AdvisoryKind.MONITORING_BLIND, True, blind,
                                      f"no fresh observation of {names}: check the detectors"))
    elif not blind and AdvisoryKind.MONITORING_BLIND in active:
        changes.append(AdvisoryChange(AdvisoryKind.MONITORING_BLIND, False, (),
                                      "every national component is observed again"))
    return changes
