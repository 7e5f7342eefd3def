"""Unit tests of the notifier's rules for reaching every EO (services/notifier/domain.py): who is concerned,
which webhook notices are watched, what is escalated (superseded or not), who a digest lists, time to inform."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from services.notifier.domain import (
    EoContact,
    EoNotice,
    UnreachedEo,
    concerned_eos,
    escalation_target,
    escalation_times,
    fanout_unreached,
    plan_procedure_notices,
    time_to_reach,
    watched_for_escalation,
)
from shared.events import (
    DeliveryChannel,
    EventType,
    Language,
    Origin,
    ProcedureData,
    ProcedureState,
    Scenario,
    Scope,
)

NOW = datetime(2024, 3, 1, 12, 0, tzinfo=UTC)
WEBHOOK, EMAIL = DeliveryChannel.WEBHOOK, DeliveryChannel.EMAIL
EOS = [
    EoContact("LU0000000003", Language.DE, webhook_url="https://three.example/hook", email="three@example.lu"),
    EoContact("LU0000000001", Language.FR, webhook_url="https://one.example/hook"),
    EoContact("LU0000000002", Language.EN, email="two@example.lu"),
    EoContact("LU0000000004", Language.FR),
]


def _procedure(scenario: Scenario, *, state: ProcedureState = ProcedureState.OPEN,
               origin: Origin = Origin.DETECTED) -> ProcedureData:
    scope = Scope.EO if scenario == Scenario.EO_B2G_UNAVAILABLE else Scope.NATIONAL
    return ProcedureData(
        procedure_id="proc-1", scenario=scenario, scope=scope,
        eori="LU0000000003" if scope == Scope.EO else None, state=state, reason="test",
        opened_at=None if state == ProcedureState.PROPOSED else NOW, origin=origin,
    )


def _notice(event_id: str, minute: int = 0, *, delivered: bool = False, emailed: bool = False,
            error: str | None = None, channel: DeliveryChannel = WEBHOOK) -> EoNotice:
    return EoNotice(event_id=event_id, planned_at=NOW + timedelta(minutes=minute), delivered=delivered,
                    emailed=emailed, last_channel=channel, last_error=error)


# --- who is concerned, what is watched ----------------------------------------------------------------------


def test_a_national_procedure_concerns_every_eo_even_without_address() -> None:
    concerned = concerned_eos(event_type=EventType.PROCEDURE_OPENED, procedure=_procedure(Scenario.ADA_B2G_UNAVAILABLE),
                              eos=EOS)
    assert [eo.eori for eo in concerned] == ["LU0000000001", "LU0000000002", "LU0000000003", "LU0000000004"]


def test_scenario_1_concerns_its_eo_and_a_proposal_nobody() -> None:
    s1 = concerned_eos(event_type=EventType.PROCEDURE_OPENED, procedure=_procedure(Scenario.EO_B2G_UNAVAILABLE),
                       eos=EOS)
    assert [eo.eori for eo in s1] == ["LU0000000003"]
    proposed = _procedure(Scenario.LUCCS_UNAVAILABLE, state=ProcedureState.PROPOSED)
    assert concerned_eos(event_type=EventType.PROCEDURE_PROPOSED, procedure=proposed, eos=EOS) == []


def test_webhook_notices_are_watched_unless_the_same_plan_emails_the_eo() -> None:
    national = plan_procedure_notices(event_type=EventType.PROCEDURE_OPENED,
                                      procedure=_procedure(Scenario.ADA_B2G_UNAVAILABLE), eos=EOS,
                                      servicedesk=None, bureau=None)
    assert watched_for_escalation(national) == {"LU0000000001", "LU0000000003"}
    detected_s1 = plan_procedure_notices(event_type=EventType.PROCEDURE_OPENED,
                                         procedure=_procedure(Scenario.EO_B2G_UNAVAILABLE), eos=EOS,
                                         servicedesk=None, bureau=None)
    assert watched_for_escalation(detected_s1) == set(), "a detected scenario 1 is e-mailed at once already"
    reported_s1 = plan_procedure_notices(
        event_type=EventType.PROCEDURE_OPENED, procedure=_procedure(Scenario.EO_B2G_UNAVAILABLE,
                                                                    origin=Origin.EO_REPORT),
        eos=EOS, servicedesk=None, bureau=None,
    )
    assert watched_for_escalation(reported_s1) == {"LU0000000003"}


def test_escalation_then_digest_times() -> None:
    assert escalation_times(planned_at=NOW, escalate_after_s=60) == (
        NOW + timedelta(seconds=60), NOW + timedelta(seconds=120)
    )
    assert escalation_times(planned_at=NOW, escalate_after_s=0) == (NOW, NOW)


# --- what is escalated ----------------------------------------------------------------------------------------


def test_an_undelivered_notice_is_emailed_once() -> None:
    assert escalation_target([_notice("e1")], has_email=True) == "e1"
    assert escalation_target([_notice("e1", emailed=True)], has_email=True) is None
    assert escalation_target([_notice("e1", delivered=True)], has_email=True) is None


def test_nothing_to_escalate_without_an_email_address_or_notice() -> None:
    assert escalation_target([_notice("e1")], has_email=False) is None
    assert escalation_target([], has_email=True) is None


def test_a_superseded_notice_is_not_escalated_alone_the_current_one_goes_instead() -> None:
    # The procedure changed (or closed, or another procedure of the subject followed) since e1.
    assert escalation_target([_notice("e1"), _notice("e2", 1)], has_email=True) == "e2"
    assert escalation_target([_notice("e1"), _notice("e2", 1), _notice("e3", 2)], has_email=True) == "e3"


def test_nothing_goes_when_the_current_situation_was_delivered_or_emailed() -> None:
    assert escalation_target([_notice("e1"), _notice("e2", 1, delivered=True)], has_email=True) is None
    assert escalation_target([_notice("e1"), _notice("e2", 1, emailed=True)], has_email=True) is None


def test_an_older_delivery_does_not_count_for_the_current_situation() -> None:
    # Told of e1 (by e-mail, say) but not of the change e2: e2 goes.
    assert escalation_target([_notice("e1", delivered=True, emailed=True), _notice("e2", 1)], has_email=True) == "e2"


# --- who a digest lists -----------------------------------------------------------------------------------------


def test_a_digest_lists_exactly_the_unreached_with_their_latest_error() -> None:
    unreached = fanout_unreached({
        "LU3": [_notice("e1", error="HTTP 500"), _notice("e2", 1, error="SMTP 451: try later", channel=EMAIL)],
        "LU1": [_notice("e1", delivered=True)],
        "LU2": [_notice("e1", error="HTTP 500", emailed=True), _notice("e2", 1, delivered=True)],  # reached later
        "LU4": [_notice("e1")],  # nothing failed yet
    })
    assert unreached == [
        UnreachedEo("LU3", EMAIL, "SMTP 451: try later"), UnreachedEo("LU4", WEBHOOK, None),
    ]


def test_a_digest_of_a_fully_reached_fanout_is_empty() -> None:
    assert fanout_unreached({"LU1": [_notice("e1", delivered=True)]}) == []
    assert fanout_unreached({}) == []


# --- time to inform ------------------------------------------------------------------------------------------------


def _at(*seconds: float | None) -> list[datetime | None]:
    return [None if s is None else NOW + timedelta(seconds=s) for s in seconds]


def test_time_to_reach_counts_from_the_opening() -> None:
    times = time_to_reach(opened_at=NOW, reached_at=_at(3, 1, 2, 4))
    assert (times.reached_50_s, times.reached_99_s, times.reached_all_s) == (2.0, 4.0, 4.0)


def test_time_to_reach_is_null_until_the_share_is_reached() -> None:
    times = time_to_reach(opened_at=NOW, reached_at=_at(1, 2, None, None))
    assert (times.reached_50_s, times.reached_99_s, times.reached_all_s) == (2.0, None, None)
    hundred = time_to_reach(opened_at=NOW, reached_at=_at(*range(1, 100), None))
    assert (hundred.reached_50_s, hundred.reached_99_s, hundred.reached_all_s) == (50.0, 99.0, None)


@pytest.mark.parametrize("reached", [[], _at(1, 2)])
def test_time_to_reach_without_concerned_eos_or_opening_is_null(reached: list[datetime | None]) -> None:
    opened = None if reached else NOW
    times = time_to_reach(opened_at=opened, reached_at=reached)
    assert (times.reached_50_s, times.reached_99_s, times.reached_all_s) == (None, None, None)


def test_time_to_first_notice_is_the_earliest_reach_from_the_opening() -> None:
    assert time_to_reach(opened_at=NOW, reached_at=_at(3, None, 1.5, 4)).first_reached_s == 1.5
    assert time_to_reach(opened_at=NOW, reached_at=_at(None, None)).first_reached_s is None
    assert time_to_reach(opened_at=None, reached_at=_at(1)).first_reached_s is None


def test_time_to_reach_is_never_negative() -> None:
    assert time_to_reach(opened_at=NOW, reached_at=_at(-0.5)).reached_all_s == 0.0


@settings(max_examples=200, deadline=None, database=None)
@given(st.lists(st.one_of(st.none(), st.floats(min_value=0, max_value=3600)), min_size=1, max_size=300))
def test_time_to_reach_grows_with_the_share(seconds: list[float | None]) -> None:
    times = time_to_reach(opened_at=NOW, reached_at=_at(*seconds))
    shares = [times.reached_50_s, times.reached_99_s, times.reached_all_s]
    known = [s for s in shares if s is not None]
    assert known == sorted(known)
    assert shares[len(known):] == [None] * (3 - len(known)), "a larger share is not reached before a smaller one"
    assert (times.reached_all_s is not None) == all(s is not None for s in seconds)


def test_the_example_configuration_shows_the_default_escalation_delay() -> None:
    import tomllib
    from pathlib import Path

    from shared.config import NotifierSettings

    example = Path(__file__).parents[2] / "deploy" / "luccs.example.toml"
    notifier = tomllib.loads(example.read_text(encoding="utf-8"))["notifier"]
    assert notifier["escalate_after_s"] == NotifierSettings().escalate_after_s == 60.0


def test_the_reach_endpoint_is_documented_with_its_response_model() -> None:
    from fastapi import FastAPI

    from services.notifier.api import router

    app = FastAPI()
    app.include_router(router)
    spec = app.openapi()
    route = spec["paths"]["/api/v1/procedures/{procedure_id}/reach"]["get"]
    assert route["responses"]["200"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/ProcedureReach"
    }
    assert "404" in route["responses"]
    fields = spec["components"]["schemas"]["ProcedureReach"]["properties"]
    assert {"concerned", "reached", "unreached", "reached_50_s", "reached_99_s", "reached_all_s"} <= set(fields)
    assert set(spec["components"]["schemas"]["UnreachedEo"]["properties"]) == {"eori", "channel", "last_error"}
