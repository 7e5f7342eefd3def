"""What an EO is told about a procedure event: pure, exhaustively tested; the templates only word it.

:func:`eo_guidance` turns a procedure event (its type, the procedure's scenario, previous scenario and origin,
the national component states it carries), what the notifier knows of the other open procedures
(:class:`~services.notifier.domain.Situation`, the EO's own scenario-1 procedure) into an
:class:`EoGuidance`: a subject line, what happened, and the steps the EO must take, each a key of the
phrase table of every language (``templates/eo/<lang>/_phrases.txt``). Exactly one of the steps is the
:class:`Advice`: which channel to lodge declarations through, if any.

A procedure a maintenance window opened (origin ``planned``) is announced as planned maintenance, with the
window's announced end when the event carries it, never as a detected outage; its recorded reason (the
operator's reason for the window) is not quoted to EOs.

The rule the advice obeys (product section 3): a notice never advises a channel that is down.
- NTP counts as down when the event's ``components`` say so, when the procedure itself is scenario 3 and in
  force, when another national procedure in scenario 3 is open, or when an NTP-only advisory is active.
  NTP is then never advised: the EO is sent to the Bureau de recette Douanes in the exception case
  (scenario 3 in force), else to the Servicedesk eDouane.
- NTP whose state is ``unknown`` (no fresh observation, or no state in the event) is advised with a caveat
  (:attr:`Advice.LODGE_IN_NTP_UNCONFIRMED`: if NTP does not answer, ask the Servicedesk). Unknown is not
  down: the product never opens or closes anything on it ("a dead detector is not a dead LUCCS"), and the
  fallback channel is what keeps declarations flowing; but a notice must not vouch for what nobody saw.
  NTP is advised outright only when the event says it is ``up``.
- The customs B2G channel counts as down when the event's ``components`` say so, when the procedure is
  national and in force, or when another national procedure is open. "Lodge over B2G again" is advised only
  when a procedure closes, none of those holds and the EO's own B2G is not in fallback (no open
  scenario-1 procedure of its own). ``unknown`` does not hold it back: the closure itself (probes that
  recovered, or an operator's decision) vouches for B2G.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime
from enum import StrEnum

from services.notifier.domain import NoticeKind, Situation, notice_kind
from shared.events import Component, ComponentState, DetectedReason, Origin, ProcedureData, Scenario

__all__ = [
    "ADVISED_CHANNEL",
    "EO_NOTICE_KINDS",
    "PHRASE_KEYS",
    "Advice",
    "EoGuidance",
    "Happening",
    "Headline",
    "RecordedReason",
    "Step",
    "b2g_state",
    "eo_guidance",
    "ntp_state",
    "recorded_reason",
]

S1, S2, S3 = Scenario.EO_B2G_UNAVAILABLE, Scenario.ADA_B2G_UNAVAILABLE, Scenario.LUCCS_UNAVAILABLE
UP, DOWN, UNKNOWN = ComponentState.UP, ComponentState.DOWN, ComponentState.UNKNOWN
EO_NOTICE_KINDS = (NoticeKind.OPENED, NoticeKind.UPDATED, NoticeKind.CLOSED)


class Advice(StrEnum):
    """Where the EO lodges its declarations now: the one step of a notice that names a channel to use."""

    LODGE_IN_NTP = "lodge_in_ntp"
    """Lodge in the National Trader Portal until B2G works again (NTP is up)."""
    LODGE_IN_NTP_UNCONFIRMED = "lodge_in_ntp_unconfirmed"
    """Lodge in NTP, but our monitoring cannot confirm it is up: if it does not answer, ask the Servicedesk."""
    ASK_SERVICEDESK = "ask_servicedesk"
    """NTP is down too, outside the exception case: do not count on it, the Servicedesk says how to proceed."""
    CONTACT_BUREAU = "contact_bureau"
    """The exception case (LUCCS unavailable): contact the Bureau de recette Douanes, use neither NTP nor B2G."""
    RESUME_B2G = "resume_b2g"
    """Back to normal: lodge over B2G (AS4) again."""


ADVISED_CHANNEL: dict[Advice, Component | None] = {
    Advice.LODGE_IN_NTP: Component.NTP,
    Advice.LODGE_IN_NTP_UNCONFIRMED: Component.NTP,
    Advice.ASK_SERVICEDESK: None,
    Advice.CONTACT_BUREAU: None,
    Advice.RESUME_B2G: Component.ADA_B2G,
}
"""The national channel each advice tells the EO to use (None: a person, not a channel)."""


class Headline(StrEnum):
    """The subject line of an EO notice."""

    OPENED = "headline_opened"
    OPENED_PLANNED = "headline_opened_planned"
    CHANGED = "headline_changed"
    CLOSED_BACK_TO_NORMAL = "headline_closed_back_to_normal"
    CLOSED_NATIONAL_STILL_IN_FORCE = "headline_closed_national_still_in_force"
    CLOSED_OWN_B2G_STILL_DOWN = "headline_closed_own_b2g_still_down"
    CLOSED_B2G_STILL_DOWN = "headline_closed_b2g_still_down"


class Happening(StrEnum):
    """What happened (or changed): the first part of an EO notice."""

    EO_B2G_DOWN_DETECTED = "eo_b2g_down_detected"
    EO_B2G_DOWN_REPORTED = "eo_b2g_down_reported"
    EO_B2G_DOWN_DECLARED = "eo_b2g_down_declared"
    ADA_B2G_DOWN = "ada_b2g_down"
    LUCCS_DOWN = "luccs_down"
    ADA_B2G_PLANNED = "ada_b2g_planned"
    """A maintenance window (announced) takes the customs B2G channel down: planned, not a failure."""
    LUCCS_PLANNED = "luccs_planned"
    NTP_DOWN_TOO = "ntp_down_too"
    NTP_BACK = "ntp_back"
    STILL_EO_B2G_DOWN = "still_eo_b2g_down"
    STILL_ADA_B2G_DOWN = "still_ada_b2g_down"
    STILL_LUCCS_DOWN = "still_luccs_down"
    EO_B2G_BACK = "eo_b2g_back"
    ADA_B2G_BACK = "ada_b2g_back"
    LUCCS_BACK = "luccs_back"


class Step(StrEnum):
    """What the EO must do or know besides the :class:`Advice`, one line of the notice each."""

    OUTAGE_REPORTED_BY_YOU = "outage_reported_by_you"
    SERVICEDESK_TOLD = "servicedesk_told"
    EXCEPTION_CASE_IN_FORCE = "exception_case_in_force"
    """Another (national) procedure in scenario 3 is open: NTP is down as well."""
    NATIONAL_STILL_IN_FORCE = "national_still_in_force"
    OWN_B2G_STILL_DOWN = "own_b2g_still_down"
    ADA_B2G_STILL_DOWN = "ada_b2g_still_down"
    """The procedure closed, but the event says the customs B2G channel is down."""
    NTP_STILL_DOWN = "ntp_still_down"
    ALSO_YOUR_OWN_OUTAGE = "also_your_own_outage"
    RESTORATION_SEEN_BY_MONITORING = "restoration_seen_by_monitoring"
    RESTORATION_REPORT_UP = "restoration_report_up"
    RESTORATION_TELL_SERVICEDESK = "restoration_tell_servicedesk"
    RESTORATION_TO_BE_TOLD = "restoration_to_be_told"
    NOTICE_WHEN_B2G_BACK = "notice_when_b2g_back"
    NOTICE_WHEN_CHANGED = "notice_when_changed"


class RecordedReason(StrEnum):
    """The recorded reason of the event: a reason of the scenario engine is worded in the EO's language,
    any other (an operator's or an EO's own words) is quoted as written."""

    ADA_B2G_DOWN = "reason_ada_b2g_down"
    LUCCS_DOWN = "reason_luccs_down"
    EO_B2G_DOWN = "reason_eo_b2g_down"
    ADA_B2G_BACK = "reason_ada_b2g_back"
    ADA_B2G_BACK_NTP_DOWN = "reason_ada_b2g_back_ntp_down"
    EO_B2G_BACK = "reason_eo_b2g_back"
    PLANNED_MAINTENANCE = "reason_planned_maintenance"
    """A procedure opened by a maintenance window: its recorded reason holds the operator's reason for the
    window, which EOs are not shown (neither the announcements nor the public page show it)."""
    QUOTED = "reason_quoted"


_DETECTED_REASONS = {reason.value: RecordedReason[reason.name] for reason in DetectedReason}


def recorded_reason(reason: str) -> RecordedReason:
    """How a notice words a procedure event's ``reason`` (see :class:`RecordedReason`)."""
    return _DETECTED_REASONS.get(reason, RecordedReason.QUOTED)


PHRASE_KEYS: tuple[str, ...] = tuple(
    member.value for enum in (Headline, Happening, Step, Advice, RecordedReason, Scenario) for member in enum
)
"""Every phrase an EO notice may need, in every language: the keys of ``templates/eo/<lang>/_phrases.txt``
(scenario values name the scenarios)."""


@dataclass(frozen=True)
class EoGuidance:
    """What one EO notice says, as phrase keys and the values the phrases name."""

    kind: NoticeKind
    headline: Headline
    happened: Happening
    advice: Advice
    steps: tuple[Step | Advice, ...]
    """The "what you must do" lines in order; ``advice`` is one of them."""
    reason: RecordedReason = RecordedReason.QUOTED
    national_procedure_id: str | None = None
    """Another open national procedure, which the notice names."""
    national_scenario: Scenario | None = None
    own_procedure_id: str | None = None
    """The EO's own open scenario-1 procedure, which a national notice names."""
    planned_until: datetime | None = None
    """The announced end of the maintenance window behind a planned opening, when known."""


def ntp_state(procedure: ProcedureData, situation: Situation, *, in_force: bool) -> ComponentState:
    """NTP as a notice must take it: down if anything the notifier knows says so, else what the event says."""
    reported = procedure.components.get(Component.NTP, UNKNOWN)
    if reported == DOWN or situation.ntp_down or (in_force and procedure.scenario == S3):
        return DOWN
    return reported


def b2g_state(procedure: ProcedureData, situation: Situation, *, in_force: bool) -> ComponentState:
    """The customs B2G channel as a notice must take it: down if anything the notifier knows says so."""
    reported = procedure.components.get(Component.ADA_B2G, UNKNOWN)
    national_in_force = in_force and procedure.scenario in (S2, S3)
    if reported == DOWN or situation.national_scenario is not None or national_in_force:
        return DOWN
    return reported


def eo_guidance(
    *, event_type: str, procedure: ProcedureData, situation: Situation, own_procedure_id: str | None = None
) -> EoGuidance:
    """What an EO is told about a procedure event (see the module docstring for the rules).

    ``situation`` describes the channels besides this procedure (another open national procedure, an active
    NTP-only advisory); ``own_procedure_id`` is the EO's own open scenario-1 procedure, for national notices.
    ValueError for events EOs get no notice of (proposals, advisories).
    """
    kind = notice_kind(event_type)
    if kind not in EO_NOTICE_KINDS:
        raise ValueError(f"no EO notice for {event_type}")
    guidance = _guidance(kind, procedure, situation, own_procedure_id)
    if kind == NoticeKind.OPENED and _planned(procedure):
        return replace(guidance, headline=Headline.OPENED_PLANNED, happened=_OPENED_PLANNED[procedure.scenario],
                       reason=RecordedReason.PLANNED_MAINTENANCE, planned_until=procedure.maintenance_ends_at)
    return replace(guidance, reason=recorded_reason(procedure.reason))


def _planned(procedure: ProcedureData) -> bool:
    """Opened by a maintenance window: an announced unavailability, not a detected outage."""
    return procedure.origin == Origin.PLANNED and procedure.scenario in _OPENED_PLANNED


def _guidance(
    kind: NoticeKind, procedure: ProcedureData, situation: Situation, own_procedure_id: str | None
) -> EoGuidance:
    scenario = procedure.scenario
    in_force = kind != NoticeKind.CLOSED
    exception_elsewhere = situation.national_scenario == S3
    exception = exception_elsewhere or (in_force and scenario == S3)
    ntp = ntp_state(procedure, situation, in_force=in_force)
    without_b2g = _without_b2g(ntp=ntp, exception=exception)
    elsewhere: tuple[Step, ...] = (Step.EXCEPTION_CASE_IN_FORCE,) if exception_elsewhere else ()
    national_id, national_scenario = situation.national_procedure_id, situation.national_scenario
    own = own_procedure_id if scenario != S1 else None

    if kind == NoticeKind.OPENED or kind == NoticeKind.UPDATED:
        headline = Headline.OPENED if kind == NoticeKind.OPENED else Headline.CHANGED
        happened = _happened(kind, procedure)
        steps: tuple[Step | Advice, ...]
        if scenario == S3:
            steps = (without_b2g, Step.NOTICE_WHEN_CHANGED)
        elif scenario == S2:
            also_own = (Step.ALSO_YOUR_OWN_OUTAGE,) if own else ()
            steps = (*elsewhere, without_b2g, *also_own, Step.NOTICE_WHEN_B2G_BACK)
        elif kind == NoticeKind.OPENED:
            told = Step.OUTAGE_REPORTED_BY_YOU if procedure.origin == Origin.EO_REPORT else Step.SERVICEDESK_TOLD
            steps = (told, *elsewhere, without_b2g, _restoration(procedure.origin))
        else:
            steps = (*elsewhere, without_b2g, Step.RESTORATION_TO_BE_TOLD)
        return EoGuidance(kind=kind, headline=headline, happened=happened, advice=without_b2g, steps=steps,
                          national_procedure_id=national_id, national_scenario=national_scenario,
                          own_procedure_id=own)

    happened = _happened(kind, procedure)
    if national_scenario is not None:
        return EoGuidance(kind=kind, headline=Headline.CLOSED_NATIONAL_STILL_IN_FORCE, happened=happened,
                          advice=without_b2g, steps=(Step.NATIONAL_STILL_IN_FORCE, *elsewhere, without_b2g),
                          national_procedure_id=national_id, national_scenario=national_scenario,
                          own_procedure_id=own)
    if own:
        return EoGuidance(kind=kind, headline=Headline.CLOSED_OWN_B2G_STILL_DOWN, happened=happened,
                          advice=without_b2g, steps=(Step.OWN_B2G_STILL_DOWN, without_b2g), own_procedure_id=own)
    if b2g_state(procedure, situation, in_force=False) == DOWN:
        return EoGuidance(kind=kind, headline=Headline.CLOSED_B2G_STILL_DOWN, happened=happened,
                          advice=without_b2g, steps=(Step.ADA_B2G_STILL_DOWN, without_b2g))
    ntp_still_down: tuple[Step, ...] = (Step.NTP_STILL_DOWN,) if ntp == DOWN else ()
    return EoGuidance(kind=kind, headline=Headline.CLOSED_BACK_TO_NORMAL, happened=happened,
                      advice=Advice.RESUME_B2G, steps=(Advice.RESUME_B2G, *ntp_still_down))


def _without_b2g(*, ntp: ComponentState, exception: bool) -> Advice:
    """Where an EO whose declarations cannot go over B2G lodges them, given NTP and the exception case."""
    if exception:
        return Advice.CONTACT_BUREAU
    if ntp == DOWN:
        return Advice.ASK_SERVICEDESK
    if ntp == UP:
        return Advice.LODGE_IN_NTP
    return Advice.LODGE_IN_NTP_UNCONFIRMED


def _restoration(origin: Origin) -> Step:
    if origin == Origin.DETECTED:
        return Step.RESTORATION_SEEN_BY_MONITORING
    if origin == Origin.EO_REPORT:
        return Step.RESTORATION_REPORT_UP
    return Step.RESTORATION_TELL_SERVICEDESK


_OPENED = {S2: Happening.ADA_B2G_DOWN, S3: Happening.LUCCS_DOWN}
_OPENED_PLANNED = {S2: Happening.ADA_B2G_PLANNED, S3: Happening.LUCCS_PLANNED}
_OPENED_S1 = {Origin.DETECTED: Happening.EO_B2G_DOWN_DETECTED, Origin.EO_REPORT: Happening.EO_B2G_DOWN_REPORTED}
_STILL = {S1: Happening.STILL_EO_B2G_DOWN, S2: Happening.STILL_ADA_B2G_DOWN, S3: Happening.STILL_LUCCS_DOWN}
_CLOSED = {S1: Happening.EO_B2G_BACK, S2: Happening.ADA_B2G_BACK, S3: Happening.LUCCS_BACK}


def _happened(kind: NoticeKind, procedure: ProcedureData) -> Happening:
    scenario, previous = procedure.scenario, procedure.previous_scenario
    if kind == NoticeKind.CLOSED:
        return _CLOSED[scenario]
    if kind == NoticeKind.UPDATED:
        if (previous, scenario) == (S2, S3):
            return Happening.NTP_DOWN_TOO
        if (previous, scenario) == (S3, S2):
            return Happening.NTP_BACK
        return _STILL[scenario]
    if scenario == S1:
        return _OPENED_S1.get(procedure.origin, Happening.EO_B2G_DOWN_DECLARED)
    return _OPENED[scenario]
