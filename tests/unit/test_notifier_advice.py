"""What an EO is told (services/notifier/advice.py): every combination of event type, scenario, origin, other
open procedures and component states gets the advice of the rules, no notice ever advises a channel that is
down, and every phrase exists in every language."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from services.notifier.advice import (
    ADVISED_CHANNEL,
    PHRASE_KEYS,
    Advice,
    EoGuidance,
    Happening,
    Headline,
    RecordedReason,
    Step,
    eo_guidance,
    recorded_reason,
)
from services.notifier.domain import Situation
from services.notifier.notices import TEMPLATE_DIR, Contacts, NoticeTexts
from shared.events import (
    Component,
    ComponentState,
    DetectedReason,
    EventType,
    Language,
    Origin,
    ProcedureData,
    ProcedureState,
    Scenario,
    Scope,
)

S1, S2, S3 = Scenario.EO_B2G_UNAVAILABLE, Scenario.ADA_B2G_UNAVAILABLE, Scenario.LUCCS_UNAVAILABLE
OPENED, UPDATED, CLOSED = EventType.PROCEDURE_OPENED, EventType.PROCEDURE_UPDATED, EventType.PROCEDURE_CLOSED
UP, DOWN, UNKNOWN = ComponentState.UP, ComponentState.DOWN, ComponentState.UNKNOWN
MISSING = None  # the event carries no state for the component (older events): taken as unknown
AT = datetime(2024, 3, 1, 8, 15, tzinfo=UTC)
TEXTS = NoticeTexts(contacts=Contacts(servicedesk="+352 2818 2525", bureau="recette@do.etat.lu"))

SITUATIONS = {
    "alone": Situation(),
    "national S2 open": Situation("nat-9", S2),
    "national S3 open": Situation("nat-9", S3),
    "NTP-only advisory": Situation(ntp_advisory=True),
    "national S2 open + NTP advisory": Situation("nat-9", S2, ntp_advisory=True),
}
PREVIOUS: dict[EventType, list[Scenario | None]] = {OPENED: [None], CLOSED: [None], UPDATED: [None, S1, S2, S3]}
STATES: list[ComponentState | None] = [UP, DOWN, UNKNOWN, MISSING]


def procedure(
    event_type: EventType, scenario: Scenario, *, previous: Scenario | None = None, origin: Origin = Origin.DETECTED,
    ntp: ComponentState | None = UP, ada: ComponentState | None = UP,
) -> ProcedureData:
    closed = event_type == CLOSED
    components = {c: s for c, s in ((Component.NTP, ntp), (Component.ADA_B2G, ada)) if s is not None}
    return ProcedureData(
        procedure_id="proc-7f3a", scenario=scenario, previous_scenario=previous,
        scope=Scope.EO if scenario == S1 else Scope.NATIONAL, eori="LU0000000002" if scenario == S1 else None,
        state=ProcedureState.CLOSED if closed else ProcedureState.OPEN, reason="ada-as4 refused 3 probes",
        opened_at=AT, closed_at=AT if closed else None, origin=origin, components=components,
    )


def every_case() -> list[dict[str, Any]]:
    cases = []
    kinds: list[Any] = [OPENED, UPDATED, CLOSED]
    for event_type, scenario, origin, situation, own in itertools.product(
        kinds, (S1, S2, S3), list(Origin), list(SITUATIONS), (None, "own-42")
    ):
        for ntp, ada, previous in itertools.product(STATES, STATES, PREVIOUS[event_type]):
            cases.append({"event_type": event_type, "scenario": scenario, "previous": previous, "origin": origin,
                          "situation": situation, "own": own, "ntp": ntp, "ada": ada})
    return cases


CASES = every_case()


def guidance_of(case: dict[str, Any]) -> EoGuidance:
    return eo_guidance(
        event_type=case["event_type"].value,
        procedure=procedure(case["event_type"], case["scenario"], previous=case["previous"], origin=case["origin"],
                            ntp=case["ntp"], ada=case["ada"]),
        situation=SITUATIONS[case["situation"]], own_procedure_id=case["own"],
    )


def expected_advice(case: dict[str, Any]) -> Advice:
    """The rules of the product as a table, written apart from the code under test."""
    situation: Situation = SITUATIONS[case["situation"]]
    closing = case["event_type"] == CLOSED
    own_b2g_down = case["own"] is not None and case["scenario"] != S1
    if closing and situation.national_scenario is None and not own_b2g_down and case["ada"] != DOWN:
        return Advice.RESUME_B2G  # back to normal: nothing else is known to be down
    if situation.national_scenario == S3 or (case["scenario"] == S3 and not closing):
        return Advice.CONTACT_BUREAU  # the exception case
    if case["ntp"] == DOWN or situation.ntp_advisory:
        return Advice.ASK_SERVICEDESK
    return Advice.LODGE_IN_NTP if case["ntp"] == UP else Advice.LODGE_IN_NTP_UNCONFIRMED


def down_channels(case: dict[str, Any]) -> set[Component]:
    """Every national channel anything the notifier knows says is down (or, for B2G, still in fallback)."""
    situation: Situation = SITUATIONS[case["situation"]]
    in_force = case["event_type"] != CLOSED
    down = set()
    if case["ntp"] == DOWN or situation.ntp_down or (in_force and case["scenario"] == S3):
        down.add(Component.NTP)
    # The customs B2G, or the EO's own (scenario 1 in force, or its own procedure open): no "lodge over B2G".
    if (case["ada"] == DOWN or situation.national_scenario is not None or in_force
            or (case["own"] is not None and case["scenario"] != S1)):
        down.add(Component.ADA_B2G)
    return down


def test_the_cases_cover_every_combination() -> None:
    # (1 previous scenario for opened and closed, 4 for updated) x scenarios x origins x other procedures
    # x own procedure x NTP states x ADA B2G states
    assert len(CASES) == (1 + 4 + 1) * 3 * len(Origin) * 5 * 2 * 4 * 4
    assert {guidance_of(c).advice for c in CASES} == set(Advice)


def test_every_combination_gets_the_advice_of_the_rules() -> None:
    wrong = []
    for case in CASES:
        guidance = guidance_of(case)
        advices = [step for step in guidance.steps if isinstance(step, Advice)]
        exception_named = (Step.EXCEPTION_CASE_IN_FORCE in guidance.steps and guidance.national_procedure_id == "nat-9")
        if (guidance.advice != expected_advice(case) or advices != [guidance.advice]
                or ADVISED_CHANNEL[guidance.advice] in down_channels(case)
                or (guidance.advice == Advice.LODGE_IN_NTP and case["ntp"] != UP)  # outright only when seen up
                or (SITUATIONS[case["situation"]].national_scenario == S3 and not exception_named
                    and not (case["scenario"] == S3 and case["event_type"] != CLOSED))):
            wrong.append((case, guidance))
    assert not wrong, f"{len(wrong)} wrong, e.g. {wrong[0]}"


@settings(max_examples=500, deadline=None)
@given(
    event_type=st.sampled_from([OPENED, UPDATED, CLOSED]),
    scenario=st.sampled_from(list(Scenario)),
    previous=st.none() | st.sampled_from(list(Scenario)),
    origin=st.sampled_from(list(Origin)),
    national=st.none() | st.sampled_from(list(Scenario)),
    ntp_advisory=st.booleans(),
    own=st.none() | st.just("own-1"),
    components=st.dictionaries(st.sampled_from([Component.NTP, Component.ADA_B2G, Component.EO_B2G]),
                               st.sampled_from(list(ComponentState))),
)
def test_no_notice_ever_advises_a_channel_that_is_down(
    event_type: EventType, scenario: Scenario, previous: Scenario | None, origin: Origin, national: Scenario | None,
    ntp_advisory: bool, own: str | None, components: dict[Component, ComponentState],
) -> None:
    data = procedure(event_type, scenario, previous=previous, origin=origin, ntp=None, ada=None)
    data = data.model_copy(update={"components": components})
    situation = Situation("nat-1" if national else None, national, ntp_advisory)
    guidance = eo_guidance(event_type=event_type.value, procedure=data, situation=situation, own_procedure_id=own)
    channel = ADVISED_CHANNEL[guidance.advice]
    ntp_down = components.get(Component.NTP) == DOWN or situation.ntp_down or (
        event_type != CLOSED and scenario == S3)
    if channel == Component.NTP:
        assert not ntp_down
    if channel == Component.ADA_B2G:
        assert event_type == CLOSED and components.get(Component.ADA_B2G) != DOWN and national is None
        assert own is None or scenario == S1
    assert [step for step in guidance.steps if isinstance(step, Advice)] == [guidance.advice]


# --- the product's situations, one by one ------------------------------------------------------------------


def test_scenario_3_closed_with_b2g_back_but_ntp_still_down_sends_eos_to_b2g_and_says_ntp_is_down() -> None:
    guidance = eo_guidance(event_type=CLOSED.value, procedure=procedure(CLOSED, S3, ntp=DOWN), situation=Situation())
    assert guidance.headline == Headline.CLOSED_BACK_TO_NORMAL and guidance.happened == Happening.LUCCS_BACK
    assert guidance.steps == (Advice.RESUME_B2G, Step.NTP_STILL_DOWN)


def test_scenario_2_whose_event_says_ntp_is_down_sends_eos_to_the_servicedesk_not_to_ntp() -> None:
    guidance = eo_guidance(event_type=OPENED.value, procedure=procedure(OPENED, S2, ntp=DOWN), situation=Situation())
    assert guidance.advice == Advice.ASK_SERVICEDESK


def test_a_closure_while_the_event_says_b2g_is_down_does_not_send_eos_back_to_b2g() -> None:
    guidance = eo_guidance(event_type=CLOSED.value, procedure=procedure(CLOSED, S2, ada=DOWN), situation=Situation())
    assert guidance.headline == Headline.CLOSED_B2G_STILL_DOWN
    assert guidance.steps == (Step.ADA_B2G_STILL_DOWN, Advice.LODGE_IN_NTP)


def test_a_national_closure_while_another_national_procedure_is_open_is_not_back_to_normal() -> None:
    guidance = eo_guidance(event_type=CLOSED.value, procedure=procedure(CLOSED, S2), situation=Situation("nat-9", S3))
    assert guidance.headline == Headline.CLOSED_NATIONAL_STILL_IN_FORCE
    assert guidance.steps == (Step.NATIONAL_STILL_IN_FORCE, Step.EXCEPTION_CASE_IN_FORCE, Advice.CONTACT_BUREAU)


@pytest.mark.parametrize(("origin", "told", "restoration"), [
    (Origin.DETECTED, Step.SERVICEDESK_TOLD, Step.RESTORATION_SEEN_BY_MONITORING),
    (Origin.EO_REPORT, Step.OUTAGE_REPORTED_BY_YOU, Step.RESTORATION_REPORT_UP),
    (Origin.OPERATOR, Step.SERVICEDESK_TOLD, Step.RESTORATION_TELL_SERVICEDESK),
])
def test_scenario_1_opened_says_who_told_the_servicedesk_and_how_the_restoration_is_told(
    origin: Origin, told: Step, restoration: Step
) -> None:
    guidance = eo_guidance(event_type=OPENED.value, procedure=procedure(OPENED, S1, origin=origin),
                           situation=Situation())
    assert guidance.steps == (told, Advice.LODGE_IN_NTP, restoration)


@pytest.mark.parametrize(("previous", "scenario", "happened"), [
    (S2, S3, Happening.NTP_DOWN_TOO), (S3, S2, Happening.NTP_BACK), (S2, S2, Happening.STILL_ADA_B2G_DOWN),
    (None, S1, Happening.STILL_EO_B2G_DOWN), (S3, S3, Happening.STILL_LUCCS_DOWN),
])
def test_an_update_says_what_changed(previous: Scenario | None, scenario: Scenario, happened: Happening) -> None:
    guidance = eo_guidance(event_type=UPDATED.value, procedure=procedure(UPDATED, scenario, previous=previous),
                           situation=Situation())
    assert guidance.happened == happened


@pytest.mark.parametrize(("scenario", "happened"), [(S2, Happening.ADA_B2G_PLANNED), (S3, Happening.LUCCS_PLANNED)])
def test_a_planned_opening_is_planned_maintenance_with_the_same_steps_as_a_detected_one(
    scenario: Scenario, happened: Happening
) -> None:
    end = datetime(2024, 3, 1, 12, 0, tzinfo=UTC)
    detected = procedure(OPENED, scenario, ada=DOWN, ntp=UP if scenario == S2 else DOWN)
    planned = detected.model_copy(update={"origin": Origin.PLANNED, "maintenance_id": "mw-1",
                                          "maintenance_ends_at": end})
    as_detected = eo_guidance(event_type=OPENED.value, procedure=detected, situation=Situation())
    as_planned = eo_guidance(event_type=OPENED.value, procedure=planned, situation=Situation())
    assert (as_planned.headline, as_planned.happened, as_planned.reason, as_planned.planned_until) == (
        Headline.OPENED_PLANNED, happened, RecordedReason.PLANNED_MAINTENANCE, end)
    assert (as_detected.headline, as_detected.planned_until) == (Headline.OPENED, None)
    assert as_detected.happened != happened and as_detected.reason == RecordedReason.QUOTED
    assert (as_planned.advice, as_planned.steps) == (as_detected.advice, as_detected.steps)
    # Its later events say what changed, like any procedure's.
    updated = planned.model_copy(update={"previous_scenario": S2, "scenario": S3})
    assert eo_guidance(event_type=UPDATED.value, procedure=updated, situation=Situation()).happened == (
        Happening.NTP_DOWN_TOO)


def test_eos_get_no_guidance_for_proposals() -> None:
    with pytest.raises(ValueError, match="no EO notice"):
        eo_guidance(event_type=EventType.PROCEDURE_PROPOSED.value, procedure=procedure(OPENED, S2),
                    situation=Situation())


# --- the phrases ---------------------------------------------------------------------------------------------


def test_phrase_keys_are_distinct_and_are_macro_names() -> None:
    assert len(PHRASE_KEYS) == len(set(PHRASE_KEYS))
    assert all(key.isidentifier() for key in PHRASE_KEYS)


@pytest.mark.parametrize("language", list(Language))
def test_every_phrase_renders_in_every_language(language: Language) -> None:
    data = procedure(CLOSED, S1)
    guidance = EoGuidance(kind=guidance_of(CASES[0]).kind, headline=Headline.OPENED, happened=Happening.LUCCS_DOWN,
                          advice=Advice.LODGE_IN_NTP, steps=(Advice.LODGE_IN_NTP,), national_procedure_id="nat-9",
                          national_scenario=S3, own_procedure_id="own-42")
    for key in PHRASE_KEYS:
        text = TEXTS.eo_phrase(key, language=language, procedure=data, guidance=guidance)
        assert text.strip() and "{" not in text and "\n" not in text, (language, key)


def test_a_missing_phrase_is_an_error(tmp_path: Path) -> None:
    for name in ("opened.txt", "_phrases.txt"):
        source = (TEMPLATE_DIR / "eo" / "en" / name).read_text()
        if name == "_phrases.txt":
            source = "\n".join(line for line in source.splitlines() if "macro resume_b2g()" not in line)
        (tmp_path / "eo" / "en").mkdir(parents=True, exist_ok=True)
        (tmp_path / "eo" / "en" / name).write_text(source)
    texts = NoticeTexts(contacts=Contacts(), template_dir=tmp_path)
    guidance = guidance_of(CASES[0])
    with pytest.raises(LookupError, match="resume_b2g"):
        texts.eo_phrase("resume_b2g", language=Language.EN, procedure=procedure(OPENED, S2), guidance=guidance)
    assert texts.eo_phrase("lodge_in_ntp", language=Language.EN, procedure=procedure(OPENED, S2), guidance=guidance)


def test_every_distinct_guidance_renders_in_every_language() -> None:
    """Every notice the combinations call for, in full: no missing phrase, no unrendered markup."""
    seen: set[tuple[Any, ...]] = set()
    for case in CASES:
        guidance = guidance_of(case)
        variant = (guidance, case["scenario"], case["previous"])
        if variant in seen:
            continue
        seen.add(variant)
        data = procedure(case["event_type"], case["scenario"], previous=case["previous"], origin=case["origin"],
                         ntp=case["ntp"], ada=case["ada"])
        for language in Language:
            notice = TEXTS.eo_notice(event_type=case["event_type"].value, procedure=data, language=language,
                                     situation=SITUATIONS[case["situation"]], own_procedure_id=case["own"])
            assert "proc-7f3a" in notice.subject and "\n" not in notice.subject
            assert "{" not in notice.message and "proc-7f3a" in notice.message
            assert notice.message.count("\n- ") == len(guidance.steps)


# --- the recorded reason ---------------------------------------------------------------------------------------


def test_every_reason_of_the_scenario_engine_has_its_own_phrase() -> None:
    assert {recorded_reason(reason.value) for reason in DetectedReason} == set(RecordedReason) - {
        RecordedReason.QUOTED, RecordedReason.PLANNED_MAINTENANCE}
    assert recorded_reason("Planned work on the AS4 gateway") == RecordedReason.QUOTED


@pytest.mark.parametrize("language", list(Language))
def test_a_detected_reason_is_worded_in_the_eo_language_and_any_other_is_quoted(language: Language) -> None:
    detected = procedure(OPENED, S2, ntp=UP, ada=DOWN).model_copy(update={"reason": DetectedReason.ADA_B2G_DOWN.value})
    notice = TEXTS.eo_notice(event_type=OPENED.value, procedure=detected, language=language, situation=Situation())
    assert DetectedReason.ADA_B2G_DOWN.value not in notice.message  # English included: worded for EOs
    written = detected.model_copy(update={"reason": "Panne du routeur AS4"})
    notice = TEXTS.eo_notice(event_type=OPENED.value, procedure=written, language=language, situation=Situation())
    quoted = {Language.EN: '"Panne du routeur AS4"', Language.FR: "« Panne du routeur AS4 »",
              Language.DE: "„Panne du routeur AS4“"}
    assert quoted[language] in notice.message
