"""The EOs' public status page and feed, decisions: pure, ``now`` passed in; the route only reads and words.

What EOs may see (product section 4b): the national channels' states in words, the national procedure in
force and what to do now, maintenance windows, the national procedures of the last 30 days, broadcasts of
national procedures. Never evidence, detector names, recorded reasons or EO data: the values below carry
none of them (a :class:`PublicProcedure` has no ``reason`` and no ``eori``; scenario-1 procedures are
dropped by :func:`public_procedures`).

The advice (:func:`public_advice`) follows the notices' rule (services/notifier/advice.py): never a channel
that is down, never a channel nobody saw up presented as up.
- LUCCS unavailable (scenario 3 in force): contact the Bureau de recette Douanes.
- The customs B2G channel down, or a national procedure in force (scenario 2): lodge in NTP if NTP is up,
  in NTP with a caveat if NTP is unknown, ask the Servicedesk eDouane if NTP is down (or under maintenance).
- No procedure and B2G up: lodge over B2G as usual; B2G unknown: over B2G with a caveat (no procedure is
  in force, so B2G remains the channel, but the page does not vouch for what nobody saw).
The advice values that exist in the notices have the same values as the notifier's ``Advice``
(tests/unit/test_procedure_public.py checks), so both speak of the same steps.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any

from services.procedure.maintenance import Window, covered
from shared.events import (
    BroadcastAuthor,
    Component,
    ComponentState,
    Language,
    LocalisedText,
    MaintainedComponent,
    MaintenanceState,
    Origin,
    ProcedureState,
    Scenario,
    Scope,
)

__all__ = [
    "HISTORY_DAYS",
    "PUBLIC_COMPONENTS",
    "ChannelState",
    "ProcedureFacts",
    "PublicAdvice",
    "PublicBroadcast",
    "PublicProcedure",
    "PublicWindow",
    "channel_states",
    "choose_language",
    "feed_windows",
    "public_advice",
    "public_broadcast",
    "public_procedures",
    "public_windows",
]

HISTORY_DAYS = 30
PUBLIC_COMPONENTS = (Component.ADA_B2G, Component.NTP)
S1, S2, S3 = Scenario.EO_B2G_UNAVAILABLE, Scenario.ADA_B2G_UNAVAILABLE, Scenario.LUCCS_UNAVAILABLE


# ---- language -----------------------------------------------------------------------------------------

_RANGE = re.compile(r"^\s*([A-Za-z]{1,8})(?:-[A-Za-z0-9]{1,8})*\s*(?:;\s*q\s*=\s*([0-9.]+))?\s*$")


def choose_language(query: str | None, accept_language: str | None) -> Language:
    """The page's language: ``?lang=`` when it names fr, en or de; else the first of fr/en/de the
    ``Accept-Language`` header prefers (by q-value, then order; ``*`` and other languages skipped); else fr,
    the first language of the Grand Duchy's administration."""
    if query and query.strip().lower() in Language.__members__.values():
        return Language(query.strip().lower())
    ranked: list[tuple[float, int, Language]] = []
    for position, part in enumerate((accept_language or "").split(",")):
        match = _RANGE.match(part)
        if match is None:
            continue
        primary, weight = match.group(1).lower(), match.group(2)
        try:
            q = float(weight) if weight is not None else 1.0
        except ValueError:
            continue
        if q > 0 and primary in Language.__members__.values():
            ranked.append((-q, position, Language(primary)))
    return min(ranked)[2] if ranked else Language.FR


# ---- channels and advice ------------------------------------------------------------------------------


class ChannelState(StrEnum):
    """A national channel as the public page words it."""

    UP = "up"
    DOWN = "down"
    UNKNOWN = "unknown"
    MAINTENANCE = "maintenance"
    """Under an active maintenance window: down, as announced."""


def channel_states(
    observed: dict[Component, ComponentState], *, windows: Iterable[Window], ntp_advisory: bool,
    national: Scenario | None,
) -> dict[Component, ChannelState]:
    """ADA B2G and NTP as the page shows them: an active window makes its components ``maintenance``; the
    national procedure in force makes the channels it is about down (scenario 2: B2G, scenario 3: both),
    whatever the probes say, as the notices do (an operator may declare what the probes do not see); an
    active NTP-unavailable advisory makes NTP down; else what the recorded observations say (unknown when
    there are none)."""
    planned = {c for w in windows if w.state == MaintenanceState.ACTIVE for c in covered(w.component)}
    declared = _DECLARED_DOWN.get(national, frozenset()) if national is not None else frozenset()
    states: dict[Component, ChannelState] = {}
    for component in PUBLIC_COMPONENTS:
        if component in planned:
            states[component] = ChannelState.MAINTENANCE
        elif component in declared or (component == Component.NTP and ntp_advisory):
            states[component] = ChannelState.DOWN
        else:
            states[component] = ChannelState(observed.get(component, ComponentState.UNKNOWN).value)
    return states


_DECLARED_DOWN = {S2: frozenset({Component.ADA_B2G}), S3: frozenset({Component.ADA_B2G, Component.NTP})}


class PublicAdvice(StrEnum):
    """What EOs must do now, the one line of the page that names a channel (or a person)."""

    LODGE_IN_NTP = "lodge_in_ntp"
    LODGE_IN_NTP_UNCONFIRMED = "lodge_in_ntp_unconfirmed"
    ASK_SERVICEDESK = "ask_servicedesk"
    CONTACT_BUREAU = "contact_bureau"
    RESUME_B2G = "resume_b2g"
    B2G_UNCONFIRMED = "b2g_unconfirmed"
    """No procedure is in force but nobody saw B2G up: B2G as usual, with the caveat (page only)."""


_UNUSABLE = (ChannelState.DOWN, ChannelState.MAINTENANCE)


def public_advice(
    *, ada_b2g: ChannelState, ntp: ChannelState, national: Scenario | None
) -> PublicAdvice:
    """What every EO must do now (see the module docstring for the rules)."""
    if national == S3 or (ada_b2g in _UNUSABLE and ntp in _UNUSABLE):
        if national == S3:
            return PublicAdvice.CONTACT_BUREAU
        return PublicAdvice.ASK_SERVICEDESK  # both down but the exception case not (yet) declared
    if national == S2 or ada_b2g in _UNUSABLE:
        if ntp in _UNUSABLE:
            return PublicAdvice.ASK_SERVICEDESK
        if ntp == ChannelState.UP:
            return PublicAdvice.LODGE_IN_NTP
        return PublicAdvice.LODGE_IN_NTP_UNCONFIRMED
    if ada_b2g == ChannelState.UP:
        return PublicAdvice.RESUME_B2G
    return PublicAdvice.B2G_UNCONFIRMED


# ---- procedures, broadcasts, windows ------------------------------------------------------------------


@dataclass(frozen=True)
class PublicProcedure:
    """A national procedure as EOs may see it: no reason, no EORI, no evidence."""

    procedure_id: str
    scenario: Scenario
    opened_at: datetime
    closed_at: datetime | None
    planned: bool
    """Opened by a maintenance window (origin planned)."""

    @property
    def in_force(self) -> bool:
        return self.closed_at is None


@dataclass(frozen=True)
class ProcedureFacts:
    """What the read side hands over of a procedure row (a subset: nothing it must not show)."""

    procedure_id: str
    scenario: Scenario
    scope: Scope
    state: ProcedureState
    origin: Origin
    opened_at: datetime | None
    closed_at: datetime | None


def public_procedures(rows: Iterable[ProcedureFacts], *, now: datetime) -> list[PublicProcedure]:
    """The national procedures opened (confirmed) that were in force at some moment of the last
    :data:`HISTORY_DAYS` days, newest first. Scenario-1 (one EO's) and proposed ones are not public."""
    since = now - timedelta(days=HISTORY_DAYS)
    found = [
        PublicProcedure(procedure_id=r.procedure_id, scenario=r.scenario, opened_at=r.opened_at,
                        closed_at=r.closed_at if r.state == ProcedureState.CLOSED else None,
                        planned=r.origin == Origin.PLANNED)
        for r in rows
        if r.scope == Scope.NATIONAL and r.scenario != S1 and r.opened_at is not None
        and r.state in (ProcedureState.OPEN, ProcedureState.CLOSED)
        and (r.state == ProcedureState.OPEN or (r.closed_at is not None and r.closed_at >= since))
    ]
    return sorted(found, key=lambda p: p.opened_at, reverse=True)


@dataclass(frozen=True)
class PublicBroadcast:
    entry_id: int
    procedure_id: str
    author: BroadcastAuthor
    sent_at: datetime
    text: LocalisedText


def public_broadcast(
    *, entry_id: int, procedure_id: str, at: datetime, detail: Mapping[str, Any] | None
) -> PublicBroadcast | None:
    """A broadcast from its timeline entry's structured detail (``{"broadcast": {author, text: {fr, en, de},
    ...}}``, as the recorder writes it): the texts exactly as the operator wrote them. None when the entry
    carries none (a note, or an entry that is not a broadcast)."""
    recorded = (detail or {}).get("broadcast")
    if not isinstance(recorded, Mapping):
        return None
    try:
        author, text = BroadcastAuthor(str(recorded.get("author"))), LocalisedText.model_validate(recorded.get("text"))
    except ValueError:  # pydantic's ValidationError too
        return None
    return PublicBroadcast(entry_id=entry_id, procedure_id=procedure_id, author=author, sent_at=at, text=text)


@dataclass(frozen=True)
class PublicWindow:
    """A maintenance window as EOs see it: the component, the times, the state and the message written for
    EOs (never the operator's recorded reason)."""

    maintenance_id: str
    component: MaintainedComponent
    starts_at: datetime
    ends_at: datetime
    state: MaintenanceState
    message: LocalisedText | None
    updated_at: datetime


def public_windows(windows: Sequence[PublicWindow]) -> list[PublicWindow]:
    """The windows to show: scheduled and active ones, by start; done or cancelled ones of the last
    :data:`HISTORY_DAYS` days are for the feed only (see :func:`feed_windows`)."""
    current = (MaintenanceState.SCHEDULED, MaintenanceState.ACTIVE)
    return sorted((w for w in windows if w.state in current), key=lambda w: w.starts_at)


def feed_windows(windows: Sequence[PublicWindow], *, now: datetime) -> list[PublicWindow]:
    """The windows the feed announces: every one changed in the last :data:`HISTORY_DAYS` days, or current."""
    since = now - timedelta(days=HISTORY_DAYS)
    current = (MaintenanceState.SCHEDULED, MaintenanceState.ACTIVE)
    return [w for w in windows if w.state in current or w.updated_at >= since]
