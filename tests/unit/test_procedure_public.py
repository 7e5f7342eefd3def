"""The EOs' public page, decisions: the language, the channels, the advice (never a channel that is down or
that nobody saw up, presented as up), what of the procedures and broadcasts is public; and the phrase tables."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta

import pytest

from services.notifier.advice import Advice
from services.procedure.maintenance import Window
from services.procedure.public import (
    ChannelState,
    ProcedureFacts,
    PublicAdvice,
    channel_states,
    choose_language,
    public_advice,
    public_broadcast,
    public_procedures,
)
from services.procedure.public_texts import PHRASES
from shared.events import (
    Broadcast,
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

NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
S2, S3 = Scenario.ADA_B2G_UNAVAILABLE, Scenario.LUCCS_UNAVAILABLE
ADA, NTP = Component.ADA_B2G, Component.NTP


@pytest.mark.parametrize(("query", "header", "expected"), [
    (None, None, Language.FR),
    ("en", None, Language.EN),
    ("DE", "fr", Language.DE),
    ("it", "de-LU,de;q=0.9", Language.DE),  # an unknown ?lang= falls back to the header
    (None, "en-GB,en;q=0.9,fr;q=0.8", Language.EN),
    (None, "nl-BE, nl;q=0.9, de;q=0.3, fr;q=0.7", Language.FR),  # by q-value, not by order
    (None, "de;q=0.5, en;q=0.5", Language.DE),  # equal q: the first
    (None, "en;q=0, *", Language.FR),  # q=0 is "not this one"; * names none of ours
    (None, "lb-LU", Language.FR),
    (None, "garbage;;;, en;q=abc, de", Language.DE),
    ("", "", Language.FR),
])
def test_the_language_is_asked_then_accepted_then_french(query: str | None, header: str | None,
                                                          expected: Language) -> None:
    assert choose_language(query, header) == expected


STATES = list(ChannelState)
NATIONAL = [None, S2, S3]
_UNUSABLE = (ChannelState.DOWN, ChannelState.MAINTENANCE)


@pytest.mark.parametrize(("ada", "ntp", "national"), list(itertools.product(STATES, STATES, NATIONAL)))
def test_the_advice_never_sends_eos_to_a_channel_that_is_down_or_unseen(
    ada: ChannelState, ntp: ChannelState, national: Scenario | None
) -> None:
    advice = public_advice(ada_b2g=ada, ntp=ntp, national=national)
    if national == S3:
        assert advice == PublicAdvice.CONTACT_BUREAU  # the exception case: the Bureau, whatever else
    if advice in (PublicAdvice.LODGE_IN_NTP, PublicAdvice.LODGE_IN_NTP_UNCONFIRMED):
        assert ntp not in _UNUSABLE
        assert (ntp == ChannelState.UP) == (advice == PublicAdvice.LODGE_IN_NTP)  # unknown: with the caveat
    if advice in (PublicAdvice.RESUME_B2G, PublicAdvice.B2G_UNCONFIRMED):
        assert national is None and ada not in _UNUSABLE
        assert (ada == ChannelState.UP) == (advice == PublicAdvice.RESUME_B2G)
    if advice == PublicAdvice.ASK_SERVICEDESK:
        assert ntp in _UNUSABLE and national != S3


@pytest.mark.parametrize(("ada", "ntp", "national", "expected"), [
    (ChannelState.UP, ChannelState.UP, None, PublicAdvice.RESUME_B2G),
    (ChannelState.UNKNOWN, ChannelState.UP, None, PublicAdvice.B2G_UNCONFIRMED),
    (ChannelState.UP, ChannelState.UP, S2, PublicAdvice.LODGE_IN_NTP),  # declared: the procedure decides
    (ChannelState.DOWN, ChannelState.UNKNOWN, S2, PublicAdvice.LODGE_IN_NTP_UNCONFIRMED),
    (ChannelState.DOWN, ChannelState.DOWN, S2, PublicAdvice.ASK_SERVICEDESK),
    (ChannelState.MAINTENANCE, ChannelState.UP, None, PublicAdvice.LODGE_IN_NTP),  # before the planned one opens
    (ChannelState.UP, ChannelState.UP, S3, PublicAdvice.CONTACT_BUREAU),
    (ChannelState.DOWN, ChannelState.DOWN, None, PublicAdvice.ASK_SERVICEDESK),  # exception not declared yet
])
def test_the_advice_in_the_usual_situations(ada: ChannelState, ntp: ChannelState, national: Scenario | None,
                                            expected: PublicAdvice) -> None:
    assert public_advice(ada_b2g=ada, ntp=ntp, national=national) == expected


def test_the_advice_shares_the_notices_steps() -> None:
    notices = {a.value for a in Advice}
    assert {a.value for a in PublicAdvice} - notices == {PublicAdvice.B2G_UNCONFIRMED.value}


def _window(component: MaintainedComponent, state: MaintenanceState) -> Window:
    return Window(maintenance_id="m", component=component, starts_at=NOW, ends_at=NOW + timedelta(hours=1),
                  state=state)


def test_channels_show_windows_declared_procedures_and_advisories_over_the_probes() -> None:
    up = {ADA: ComponentState.UP, NTP: ComponentState.UP}
    assert channel_states({}, windows=[], ntp_advisory=False, national=None) == {
        ADA: ChannelState.UNKNOWN, NTP: ChannelState.UNKNOWN}
    assert channel_states(up, windows=[], ntp_advisory=False, national=None) == {ADA: ChannelState.UP,
                                                                                  NTP: ChannelState.UP}
    assert channel_states(up, windows=[_window(MaintainedComponent.LUCCS, MaintenanceState.ACTIVE)],
                          ntp_advisory=False, national=S3) == {ADA: ChannelState.MAINTENANCE,
                                                               NTP: ChannelState.MAINTENANCE}
    assert channel_states(up, windows=[_window(MaintainedComponent.NTP, MaintenanceState.SCHEDULED)],
                          ntp_advisory=False, national=None)[NTP] == ChannelState.UP
    assert channel_states(up, windows=[], ntp_advisory=False, national=S2) == {ADA: ChannelState.DOWN,
                                                                                NTP: ChannelState.UP}
    assert channel_states(up, windows=[], ntp_advisory=False, national=S3) == {ADA: ChannelState.DOWN,
                                                                                NTP: ChannelState.DOWN}
    assert channel_states(up, windows=[], ntp_advisory=True, national=None)[NTP] == ChannelState.DOWN


def _facts(pid: str, *, scenario: Scenario = S2, scope: Scope = Scope.NATIONAL,
           state: ProcedureState = ProcedureState.CLOSED, origin: Origin = Origin.DETECTED,
           opened: datetime | None = NOW, closed: datetime | None = NOW) -> ProcedureFacts:
    return ProcedureFacts(procedure_id=pid, scenario=scenario, scope=scope, state=state, origin=origin,
                          opened_at=opened, closed_at=closed if state == ProcedureState.CLOSED else None)


def test_only_national_procedures_in_force_in_the_last_30_days_are_public() -> None:
    old = NOW - timedelta(days=31)
    rows = [
        _facts("recent", closed=NOW - timedelta(days=2), opened=NOW - timedelta(days=3)),
        _facts("long-running", state=ProcedureState.OPEN, opened=old, origin=Origin.PLANNED),
        _facts("ended-29-days-ago", opened=old, closed=NOW - timedelta(days=29)),
        _facts("too-old", opened=old, closed=old + timedelta(hours=1)),
        _facts("one-eo", scenario=Scenario.EO_B2G_UNAVAILABLE, scope=Scope.EO, state=ProcedureState.OPEN),
        _facts("proposed", state=ProcedureState.PROPOSED, opened=None),
    ]
    shown = public_procedures(rows, now=NOW)
    assert [p.procedure_id for p in shown] == ["recent", "long-running", "ended-29-days-ago"]  # newest first
    assert {p.procedure_id: p.in_force for p in shown}["long-running"]
    assert {p.procedure_id: p.planned for p in shown}["long-running"]
    assert not hasattr(shown[0], "reason") and not hasattr(shown[0], "eori")


TRICKY = {  # what the old parsing of the timeline's text cut or mixed up: its separators, quotes, colons
    "fr": 'Appelez le « 123 » : "urgent"\nen: ceci reste du français\n[bureau] fr: aussi',
    "en": "Call \"123\": now\nde: this stays English\r\nde:",
    "de": "Rufen Sie „123“ an: sofort\nfr: das bleibt Deutsch\n\nen: ",
}


def test_a_broadcast_is_read_back_exactly_from_its_timeline_entry() -> None:
    sent = Broadcast(broadcast_id="b-1", author=BroadcastAuthor.BUREAU, text=LocalisedText(**TRICKY), sent_at=NOW)
    found = public_broadcast(entry_id=7, procedure_id="p", at=NOW,
                             detail={"broadcast": sent.model_dump(mode="json")})
    assert found is not None and found.author == BroadcastAuthor.BUREAU and found.sent_at == NOW
    for language in Language:
        assert found.text.in_language(language) == TRICKY[language.value]


@pytest.mark.parametrize("detail", [None, {}, {"broadcast": None}, {"broadcast": {"author": "bureau"}},
                                    {"broadcast": {"author": "nobody", "text": TRICKY}},
                                    {"broadcast": {"author": "bureau", "text": {**TRICKY, "de": ""}}}])
def test_an_entry_without_a_whole_broadcast_is_none(detail: dict[str, object] | None) -> None:
    assert public_broadcast(entry_id=8, procedure_id="p", at=NOW, detail=detail) is None


def test_every_language_has_every_phrase_the_page_needs() -> None:
    keys = set(PHRASES[Language.FR])
    for language in Language:
        assert set(PHRASES[language]) == keys, language
        assert all(text.strip() for text in PHRASES[language].values())
    needed = ({f"advice_{a.value}" for a in PublicAdvice} | {f"state_{s.value}" for s in ChannelState}
              | {f"scenario_{s.value}" for s in (S2, S3)} | {f"component_{c.value}" for c in MaintainedComponent}
              | {f"mstate_{m.value}" for m in MaintenanceState} | {f"feed_broadcast_{a.value}" for a in BroadcastAuthor}
              | {c.value for c in (ADA, NTP)})
    assert needed <= keys
