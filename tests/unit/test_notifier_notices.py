"""The notice texts (services/notifier/templates, rendered by services/notifier/notices.py): every scenario,
event type, audience and language renders, says what to do, and never advises a channel that is down."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest
from jinja2 import TemplateSyntaxError, UndefinedError

from services.notifier.domain import Audience, Situation
from services.notifier.notices import TEMPLATE_DIR, Contacts, EoSummary, NoticeTexts
from shared.events import (
    AdvisoryData,
    AdvisoryKind,
    CertificateExpiry,
    CertificateRole,
    Component,
    ComponentState,
    EventType,
    Evidence,
    Language,
    Origin,
    ProcedureData,
    ProcedureState,
    Scenario,
    Scope,
)

S1, S2, S3 = Scenario.EO_B2G_UNAVAILABLE, Scenario.ADA_B2G_UNAVAILABLE, Scenario.LUCCS_UNAVAILABLE
OPENED, UPDATED, CLOSED = EventType.PROCEDURE_OPENED, EventType.PROCEDURE_UPDATED, EventType.PROCEDURE_CLOSED
PROPOSED = EventType.PROCEDURE_PROPOSED
OPENED_AT = datetime(2024, 3, 1, 8, 15, tzinfo=UTC)  # 09:15 in Luxembourg
CLOSED_AT = datetime(2024, 7, 2, 17, 45, tzinfo=UTC)  # 19:45 in Luxembourg (summer time)
TEXTS = NoticeTexts(contacts=Contacts(servicedesk="+352 2818 2525", bureau="recette@do.etat.lu"))
LANGUAGES = list(Language)

# How each language tells an EO to lodge through NTP (the advice that must never be given while NTP is down).
NTP_ADVICE = {
    Language.EN: "in the National Trader Portal (NTP)",
    Language.FR: "dans le National Trader Portal (NTP)",
    Language.DE: "über das National Trader Portal (NTP)",
}
BACK_TO_B2G = {Language.EN: "over B2G (AS4) again", Language.FR: "de nouveau vos déclarations en douane par B2G",
               Language.DE: "wieder wie gewohnt über B2G (AS4)"}
BUREAU = "Bureau de recette Douanes"


def procedure(
    event_type: EventType, scenario: Scenario, *, previous: Scenario | None = None, origin: Origin = Origin.DETECTED
) -> ProcedureData:
    closed = event_type == CLOSED
    if event_type == UPDATED and previous is None:
        previous = {S1: None, S2: S3, S3: S2}[scenario]
    return ProcedureData(
        procedure_id="proc-7f3a", scenario=scenario, previous_scenario=previous,
        scope=Scope.EO if scenario == S1 else Scope.NATIONAL, eori="LU0000000002" if scenario == S1 else None,
        state=ProcedureState.CLOSED if closed else ProcedureState.OPEN, reason="ada-as4 refused 3 probes",
        opened_at=OPENED_AT, closed_at=CLOSED_AT if closed else None, origin=origin, components=components(
            scenario, closed=closed),
        evidence=[Evidence(target_id="ada-as4", component=Component.ADA_B2G, detector_instance="d1",
                           state=ComponentState.DOWN, observed_at=OPENED_AT, reason="refused")],
    )


def components(scenario: Scenario, *, closed: bool) -> dict[Component, ComponentState]:
    """The national component states a procedure event of the scenario carries."""
    up, down = ComponentState.UP, ComponentState.DOWN
    if closed or scenario == S1:
        return {Component.ADA_B2G: up, Component.NTP: up}
    return {Component.ADA_B2G: down, Component.NTP: up if scenario == S2 else down}


def eo_notice(event_type: EventType, scenario: Scenario, language: Language, situation: Situation | None = None,
              **kwargs: object) -> tuple[str, str]:
    notice = TEXTS.eo_notice(event_type=event_type.value, procedure=procedure(event_type, scenario, **kwargs),  # type: ignore[arg-type]
                             language=language, situation=situation or Situation())
    return notice.subject, notice.message


CASES = [(e, s, lang) for e in (OPENED, UPDATED, CLOSED) for s in (S1, S2, S3) for lang in LANGUAGES]


@pytest.mark.parametrize(("event_type", "scenario", "language"), CASES)
def test_every_eo_notice_names_the_procedure_and_its_time(
    event_type: EventType, scenario: Scenario, language: Language
) -> None:
    subject, message = eo_notice(event_type, scenario, language)
    assert "LUCCS" in subject and "proc-7f3a" in subject and "\n" not in subject
    assert "proc-7f3a" in message
    if event_type == CLOSED:
        assert "2024-07-02 19:45" in message and "2024-07-02 17:45 UTC" in message
    else:
        assert "2024-03-01 09:15" in message and "2024-03-01 08:15 UTC" in message
    assert "ada-as4 refused 3 probes" in message
    assert "{{" not in message and "{%" not in message


@pytest.mark.parametrize(("event_type", "scenario", "language"), CASES)
def test_each_language_has_its_own_text(event_type: EventType, scenario: Scenario, language: Language) -> None:
    mine = eo_notice(event_type, scenario, language)
    for other in LANGUAGES:
        if other != language:
            theirs = eo_notice(event_type, scenario, other)
            assert mine[0] != theirs[0] and mine[1] != theirs[1]


@pytest.mark.parametrize("language", LANGUAGES)
@pytest.mark.parametrize("event_type", [OPENED, UPDATED])
def test_scenario_3_never_advises_ntp_and_sends_eos_to_the_bureau(event_type: EventType, language: Language) -> None:
    _, message = eo_notice(event_type, S3, language)
    assert NTP_ADVICE[language] not in message
    assert f"{BUREAU} (recette@do.etat.lu)" in message


@pytest.mark.parametrize("language", LANGUAGES)
def test_scenario_2_advises_ntp_and_not_the_bureau(language: Language) -> None:
    for event_type in (OPENED, UPDATED):
        _, message = eo_notice(event_type, S2, language)
        assert NTP_ADVICE[language] in message
        assert BUREAU not in message.split("\n\n", 2)[-1]  # the "what to do" part


@pytest.mark.parametrize("language", LANGUAGES)
def test_update_from_2_to_3_says_ntp_is_down_too(language: Language) -> None:
    _, message = eo_notice(UPDATED, S3, language, previous=S2)
    words = {Language.EN: "now unavailable too", Language.FR: "désormais indisponible lui aussi",
             Language.DE: "Jetzt ist auch das National Trader Portal (NTP) nicht verfügbar"}
    assert words[language] in message


@pytest.mark.parametrize("language", LANGUAGES)
@pytest.mark.parametrize("origin", list(Origin))
def test_scenario_1_opened_tells_the_eo_the_servicedesk_knows_and_to_use_ntp(
    language: Language, origin: Origin
) -> None:
    _, message = eo_notice(OPENED, S1, language, origin=origin)
    assert "Servicedesk eDouane" in message
    assert NTP_ADVICE[language] in message


@pytest.mark.parametrize("language", LANGUAGES)
@pytest.mark.parametrize("event_type", [OPENED, UPDATED])
@pytest.mark.parametrize("situation", [Situation("nat-9", S3), Situation(ntp_advisory=True)])
def test_scenario_1_never_advises_ntp_while_ntp_is_down(
    language: Language, event_type: EventType, situation: Situation
) -> None:
    _, message = eo_notice(event_type, S1, language, situation)
    assert NTP_ADVICE[language] not in message
    if situation.national_scenario == S3:
        assert BUREAU in message and "nat-9" in message
    else:
        assert "Servicedesk eDouane (+352 2818 2525)" in message


@pytest.mark.parametrize("language", LANGUAGES)
def test_scenario_1_closed_says_the_servicedesk_was_told_of_the_restoration(language: Language) -> None:
    _, message = eo_notice(CLOSED, S1, language)
    restoration = {Language.EN: "told of the restoration", Language.FR: "informé du rétablissement",
                   Language.DE: "über die Wiederherstellung informiert"}
    assert restoration[language] in message
    assert BACK_TO_B2G[language] in message


@pytest.mark.parametrize("language", LANGUAGES)
@pytest.mark.parametrize("scenario", [S2, S3])
def test_national_closed_sends_eos_back_to_b2g(language: Language, scenario: Scenario) -> None:
    _, message = eo_notice(CLOSED, scenario, language)
    assert BACK_TO_B2G[language] in message
    assert NTP_ADVICE[language] not in message


@pytest.mark.parametrize("language", LANGUAGES)
def test_scenario_1_closed_during_a_national_procedure_does_not_send_the_eo_to_b2g(language: Language) -> None:
    subject, message = eo_notice(CLOSED, S1, language, Situation("nat-9", S2))
    assert BACK_TO_B2G[language] not in message
    assert NTP_ADVICE[language] in message and "nat-9" in subject


@pytest.mark.parametrize("language", LANGUAGES)
@pytest.mark.parametrize("ntp_down", [False, True])
def test_national_closed_reminds_an_eo_whose_own_b2g_is_still_down(language: Language, ntp_down: bool) -> None:
    notice = TEXTS.eo_notice(event_type=CLOSED.value, procedure=procedure(CLOSED, S2), language=language,
                             situation=Situation(ntp_advisory=ntp_down), own_procedure_id="own-42")
    assert "own-42" in notice.message
    assert BACK_TO_B2G[language] not in notice.message
    assert (NTP_ADVICE[language] in notice.message) is not ntp_down


@pytest.mark.parametrize("language", LANGUAGES)
@pytest.mark.parametrize("event_type", [PROPOSED, OPENED, UPDATED, CLOSED])
@pytest.mark.parametrize("scenario", [S1, S2, S3])
def test_servicedesk_notices(language: Language, event_type: EventType, scenario: Scenario) -> None:
    data = procedure(event_type, scenario)
    notice = TEXTS.staff_notice(audience=Audience.SERVICEDESK, event_type=event_type.value, procedure=data,
                                language=language, eo=EoSummary("LU0000000002", "Trading SARL"), eos_notified=3)
    assert "proc-7f3a" in notice.subject and scenario.value in notice.message
    assert "ada-as4" in notice.message  # the evidence
    if scenario == S1:
        assert "LU0000000002" in notice.subject and "Trading SARL" in notice.message
    if event_type == PROPOSED:
        assert "/api/v1/procedures/proc-7f3a/confirm" in notice.message


@pytest.mark.parametrize("language", LANGUAGES)
def test_servicedesk_is_told_when_an_eo_could_not_be_reached(language: Language) -> None:
    reached = TEXTS.staff_notice(audience=Audience.SERVICEDESK, event_type=OPENED.value,
                                 procedure=procedure(OPENED, S1), language=language, eos_notified=1)
    unreached = TEXTS.staff_notice(audience=Audience.SERVICEDESK, event_type=OPENED.value,
                                   procedure=procedure(OPENED, S1), language=language, eos_notified=0)
    assert reached.message != unreached.message


@pytest.mark.parametrize("language", LANGUAGES)
@pytest.mark.parametrize(("event_type", "previous"), [(OPENED, None), (UPDATED, S2), (UPDATED, S3), (CLOSED, None)])
def test_bureau_notices(language: Language, event_type: EventType, previous: Scenario | None) -> None:
    scenario = S2 if previous == S3 else S3
    notice = TEXTS.staff_notice(audience=Audience.BUREAU, event_type=event_type.value,
                                procedure=procedure(event_type, scenario, previous=previous), language=language,
                                eos_notified=10_000)
    assert "proc-7f3a" in notice.subject and "10000" in notice.message


@pytest.mark.parametrize("language", LANGUAGES)
@pytest.mark.parametrize("kind", list(AdvisoryKind))
@pytest.mark.parametrize("active", [True, False])
def test_advisory_notices(language: Language, kind: AdvisoryKind, active: bool) -> None:
    certificate = CertificateExpiry(target_id="ntp-tls", component=Component.NTP, role=CertificateRole.TLS,
                                    expires_at=CLOSED_AT, warning_days=14)
    advisory = AdvisoryData(advisory_id="adv-1", kind=kind, active=active, components=[Component.NTP],
                            reason="no answer", raised_at=OPENED_AT, cleared_at=None if active else CLOSED_AT,
                            certificate=certificate if kind == AdvisoryKind.CERTIFICATE_EXPIRING else None)
    event_type = EventType.ADVISORY_RAISED if active else EventType.ADVISORY_CLEARED
    notice = TEXTS.advisory_notice(event_type=event_type.value, advisory=advisory, language=language)
    assert "adv-1" in notice.subject and "ntp" in notice.message and "no answer" in notice.message
    raised_again = TEXTS.advisory_notice(
        event_type=(EventType.ADVISORY_CLEARED if active else EventType.ADVISORY_RAISED).value, advisory=advisory,
        language=language,
    )
    assert raised_again.subject != notice.subject


CERTIFICATE_WORDS = {  # how each language names the certificate, and says when it expires
    Language.EN: {CertificateRole.TLS: "TLS certificate of ada_b2g", CertificateRole.AS4_SIGNING:
                  "our own AS4 signing certificate", CertificateRole.AS4_PARTNER: "receipt-signing certificate"},
    Language.FR: {CertificateRole.TLS: "certificat TLS de ada_b2g", CertificateRole.AS4_SIGNING:
                  "notre propre signature AS4", CertificateRole.AS4_PARTNER: "accusés de réception AS4"},
    Language.DE: {CertificateRole.TLS: "TLS-Zertifikat von ada_b2g", CertificateRole.AS4_SIGNING:
                  "unserer eigenen AS4-Signatur", CertificateRole.AS4_PARTNER: "Empfangsbestätigungen signiert"},
}
EXPIRED_WORDS = {Language.EN: "has expired", Language.FR: "a expiré", Language.DE: "ist abgelaufen"}


@pytest.mark.parametrize("language", LANGUAGES)
@pytest.mark.parametrize("role", list(CertificateRole))
@pytest.mark.parametrize("warning_days", [30, 7, 0])
def test_a_certificate_advisory_names_the_certificate_its_expiry_and_the_level(
    language: Language, role: CertificateRole, warning_days: int
) -> None:
    certificate = CertificateExpiry(target_id="ada-as4", component=Component.ADA_B2G, role=role,
                                    expires_at=CLOSED_AT, warning_days=warning_days)
    advisory = AdvisoryData(advisory_id="adv-9", kind=AdvisoryKind.CERTIFICATE_EXPIRING, active=True,
                            components=[Component.ADA_B2G], reason="r", raised_at=OPENED_AT, certificate=certificate)
    notice = TEXTS.advisory_notice(event_type=EventType.ADVISORY_RAISED.value, advisory=advisory, language=language)
    assert CERTIFICATE_WORDS[language][role] in notice.subject + notice.message
    assert "2024-07-02 19:45" in notice.message and "ada-as4" in notice.message  # Luxembourg time
    assert (EXPIRED_WORDS[language] in notice.subject) == (warning_days == 0)
    assert (f"{warning_days} " in notice.subject) == (warning_days != 0)
    cleared = TEXTS.advisory_notice(event_type=EventType.ADVISORY_CLEARED.value, language=language,
                                    advisory=advisory.model_copy(update={"active": False, "cleared_at": CLOSED_AT}))
    assert cleared.subject != notice.subject and "2024-07-02 19:45" in cleared.message


def test_eos_get_no_notice_of_proposals_or_advisories() -> None:
    with pytest.raises(ValueError, match="no EO notice"):
        TEXTS.eo_notice(event_type=PROPOSED.value, procedure=procedure(OPENED, S2), language=Language.EN,
                        situation=Situation())
    with pytest.raises(ValueError, match="use eo_notice"):
        TEXTS.staff_notice(audience=Audience.EO, event_type=OPENED.value, procedure=procedure(OPENED, S2),
                           language=Language.EN)


def test_an_undefined_variable_is_an_error_not_a_blank(tmp_path: Path) -> None:
    folder = tmp_path / "eo" / "en"
    folder.mkdir(parents=True)
    (folder / "opened.txt").write_text("{% block subject %}{{ p.no_such_field }}{% endblock %}"
                                       "{% block body %}x{% endblock %}")
    texts = NoticeTexts(contacts=Contacts(), template_dir=tmp_path)
    with pytest.raises(UndefinedError):
        texts.eo_notice(event_type=OPENED.value, procedure=procedure(OPENED, S2), language=Language.EN,
                        situation=Situation())


def test_every_template_file_is_used() -> None:
    """Each audience has the same files in every language (a translation cannot go missing)."""
    root = Path(__file__).resolve().parents[2] / "services" / "notifier" / "templates"
    for audience in ("eo", "servicedesk", "bureau"):
        names = {lang.value: sorted(p.name for p in (root / audience / lang.value).iterdir()) for lang in LANGUAGES}
        assert names["fr"] == names["en"] == names["de"], audience


# --- a procedure a maintenance window opened ---------------------------------------------------------------

WINDOW_END = datetime(2024, 3, 1, 11, 30, tzinfo=UTC)  # 12:30 in Luxembourg
PLANNED_WORDS = {Language.EN: "Planned maintenance", Language.FR: "Maintenance planifiée",
                 Language.DE: "Geplante Wartung"}
DETECTED_WORDS = {  # what a detected outage's notice says happened
    S2: {Language.EN: "The B2G (AS4) channel of the customs administration (ADA) is unavailable",
         Language.FR: "Le canal B2G (AS4) de l'administration des douanes (ADA) est indisponible",
         Language.DE: "Der B2G-Kanal (AS4) der Zollverwaltung (ADA) ist nicht verfügbar"},
    S3: {Language.EN: "LUCCS is unavailable: neither", Language.FR: "LUCCS est indisponible : ni",
         Language.DE: "LUCCS ist nicht verfügbar: Weder"},
}
NOT_A_FAILURE = {Language.EN: "This is not a failure", Language.FR: "Il ne s'agit pas d'une panne",
                 Language.DE: "Es handelt sich nicht um eine Störung"}


def planned(scenario: Scenario, *, ends_at: datetime | None = WINDOW_END) -> ProcedureData:
    return procedure(OPENED, scenario, origin=Origin.PLANNED).model_copy(update={
        "maintenance_id": "mw-1", "maintenance_ends_at": ends_at, "evidence": [],
        "reason": "planned maintenance of ADA B2G until 2024-03-01T11:30:00+00:00: swap the HSM (ticket 4711)",
    })


@pytest.mark.parametrize("scenario", [S2, S3])
@pytest.mark.parametrize("language", LANGUAGES)
def test_a_planned_opening_says_planned_maintenance_and_its_announced_end_not_a_detected_outage(
    scenario: Scenario, language: Language
) -> None:
    notice = TEXTS.eo_notice(event_type=OPENED.value, procedure=planned(scenario), language=language,
                             situation=Situation())
    detected = TEXTS.eo_notice(event_type=OPENED.value, procedure=procedure(OPENED, scenario), language=language,
                               situation=Situation())
    assert PLANNED_WORDS[language] in notice.subject and PLANNED_WORDS[language] not in detected.subject
    assert PLANNED_WORDS[language] in notice.message and NOT_A_FAILURE[language] in notice.message
    assert "2024-03-01 12:30" in notice.message  # the announced end, Luxembourg time
    assert DETECTED_WORDS[scenario][language] in detected.message
    assert DETECTED_WORDS[scenario][language] not in notice.message
    assert NOT_A_FAILURE[language] not in detected.message
    # The operator's reason for the window is not quoted to EOs (neither announcements nor /public show it).
    assert "HSM" not in notice.message and "ticket 4711" not in notice.message
    # What to do is the same as for a detected outage of the same channels.
    assert notice.message.split("\n\n")[-1] == detected.message.split("\n\n")[-1]


@pytest.mark.parametrize("language", LANGUAGES)
def test_a_planned_opening_without_a_known_end_still_says_planned(language: Language) -> None:
    notice = TEXTS.eo_notice(event_type=OPENED.value, procedure=planned(S2, ends_at=None), language=language,
                             situation=Situation())
    assert PLANNED_WORDS[language] in notice.message and "12:30" not in notice.message and "?" not in notice.message


@pytest.mark.parametrize("language", LANGUAGES)
def test_later_notices_of_a_planned_procedure_say_what_changed(language: Language) -> None:
    """Only the opening is about the maintenance: an update (NTP failing as well) says what changed."""
    update = planned(S3).model_copy(update={"previous_scenario": S2, "reason": "ADA B2G (AS4) and NTP are both "
                                            "unavailable"})
    notice = TEXTS.eo_notice(event_type=UPDATED.value, procedure=update, language=language, situation=Situation())
    assert PLANNED_WORDS[language] not in notice.subject and PLANNED_WORDS[language] not in notice.message
    assert BUREAU in notice.message


@pytest.mark.parametrize("language", LANGUAGES)
def test_the_servicedesk_reads_that_a_planned_procedure_comes_from_a_maintenance_window(language: Language) -> None:
    notice = TEXTS.staff_notice(audience=Audience.SERVICEDESK, event_type=OPENED.value, procedure=planned(S2),
                                language=language, eos_notified=3)
    declared = TEXTS.staff_notice(audience=Audience.SERVICEDESK, event_type=OPENED.value, language=language,
                                  procedure=procedure(OPENED, S2, origin=Origin.OPERATOR), eos_notified=3)
    words = {Language.EN: ("planned maintenance window", "declared by an operator"),
             Language.FR: ("fenêtre de maintenance planifiée", "déclarée par un opérateur"),
             Language.DE: ("geplanten Wartungsfenster", "von einem Operator erklärt")}[language]
    assert words[0] in notice.message and "2024-03-01 12:30" in notice.message and words[1] not in notice.message
    assert words[1] in declared.message and words[0] not in declared.message


def test_compile_all_compiles_every_template_and_refuses_a_broken_one(tmp_path: Path) -> None:
    texts = NoticeTexts(contacts=Contacts())
    assert texts.compile_all() == len(list(TEMPLATE_DIR.rglob("*.txt")))
    (tmp_path / "eo").mkdir()
    (tmp_path / "eo" / "broken.txt").write_text("{% block subject %}{{ p.procedure_id {% endblock %}", encoding="utf-8")
    with pytest.raises(TemplateSyntaxError):
        NoticeTexts(contacts=Contacts(), template_dir=tmp_path).compile_all()
