"""Unit tests of the notifier's pure rules (services/notifier/domain.py): recipients, retries, URL rules."""

from __future__ import annotations

import random
import socket
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from services.notifier.domain import (
    Audience,
    EoContact,
    Situation,
    StaffContact,
    address_problem,
    bureau_concerned,
    delivery_retry_policy,
    idempotency_key,
    lane_of,
    next_attempt_at,
    notice_kind,
    plan_advisory_notices,
    plan_procedure_notices,
    webhook_url_problem,
)
from shared.events import DeliveryChannel, EventType, Language, Origin, ProcedureData, ProcedureState, Scenario, Scope

S1, S2, S3 = Scenario.EO_B2G_UNAVAILABLE, Scenario.ADA_B2G_UNAVAILABLE, Scenario.LUCCS_UNAVAILABLE
OPENED, UPDATED, CLOSED = EventType.PROCEDURE_OPENED, EventType.PROCEDURE_UPDATED, EventType.PROCEDURE_CLOSED
PROPOSED = EventType.PROCEDURE_PROPOSED
NOW = datetime(2024, 3, 1, 12, 0, tzinfo=UTC)
FAST = settings(max_examples=200, deadline=None, database=None)
SERVICEDESK = StaffContact("servicedesk@douanes.lu", Language.FR)
BUREAU = StaffContact("bureau@douanes.lu", Language.FR)


def procedure(
    scenario: Scenario, *, previous: Scenario | None = None, eori: str | None = None,
    origin: Origin = Origin.DETECTED, state: ProcedureState = ProcedureState.OPEN,
) -> ProcedureData:
    scope = Scope.EO if scenario == S1 else Scope.NATIONAL
    return ProcedureData(
        procedure_id="proc-1", scenario=scenario, previous_scenario=previous, scope=scope,
        eori=eori or ("LU0000000002" if scope == Scope.EO else None), state=state, reason="test",
        opened_at=NOW, origin=origin,
    )


EOS = [
    EoContact("LU0000000003", Language.DE, webhook_url="https://three.example/hook", email="three@example.lu"),
    EoContact("LU0000000001", Language.FR, webhook_url="https://one.example/hook"),
    EoContact("LU0000000002", Language.EN, email="two@example.lu"),
    EoContact("LU0000000004", Language.FR),  # neither webhook nor e-mail
]


def _who(notices: list) -> list[tuple[str, str]]:  # type: ignore[type-arg]
    return [(n.recipient_key, n.channel.value) for n in notices]


# --- recipients -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("event_type", [OPENED, UPDATED, CLOSED])
@pytest.mark.parametrize("scenario", [S2, S3])
def test_national_events_reach_every_eo_by_its_channel_then_the_servicedesk(
    event_type: EventType, scenario: Scenario
) -> None:
    notices = plan_procedure_notices(event_type=event_type.value, procedure=procedure(scenario), eos=EOS,
                                     servicedesk=SERVICEDESK, bureau=None)
    assert _who(notices) == [
        ("LU0000000001", "webhook"), ("LU0000000002", "email"), ("LU0000000003", "webhook"),
        ("servicedesk", "email"),
    ]
    assert [n.language for n in notices] == [Language.FR, Language.EN, Language.DE, Language.FR]
    assert notices[-1].audience == Audience.SERVICEDESK and notices[-1].eori is None


@pytest.mark.parametrize(
    ("event_type", "scenario", "previous", "told"),
    [
        (OPENED, S2, None, False), (OPENED, S3, None, True), (UPDATED, S3, S2, True), (UPDATED, S2, S3, True),
        (CLOSED, S3, None, True), (CLOSED, S2, None, False), (OPENED, S1, None, False), (PROPOSED, S3, None, False),
    ],
)
def test_the_bureau_hears_of_scenario_3_starting_and_ending(
    event_type: EventType, scenario: Scenario, previous: Scenario | None, told: bool
) -> None:
    data = procedure(scenario, previous=previous)
    assert bureau_concerned(event_type.value, data) is told
    notices = plan_procedure_notices(event_type=event_type.value, procedure=data, eos=EOS, servicedesk=SERVICEDESK,
                                     bureau=BUREAU)
    assert (("bureau", "email") in _who(notices)) is told


@pytest.mark.parametrize("scenario", [S1, S2, S3])
def test_proposed_procedures_reach_the_servicedesk_only(scenario: Scenario) -> None:
    notices = plan_procedure_notices(event_type=PROPOSED.value, procedure=procedure(scenario), eos=EOS,
                                     servicedesk=SERVICEDESK, bureau=BUREAU)
    assert _who(notices) == [("servicedesk", "email")]


@pytest.mark.parametrize("scenario", [S1, S2, S3])
def test_a_changed_or_withdrawn_proposal_reaches_the_servicedesk_only(scenario: Scenario) -> None:
    changed = procedure(scenario, state=ProcedureState.PROPOSED).model_copy(update={"opened_at": None})
    withdrawn = changed.model_copy(update={"state": ProcedureState.CLOSED, "closed_at": NOW})
    for event_type, data in ((UPDATED, changed), (CLOSED, withdrawn)):
        notices = plan_procedure_notices(event_type=event_type.value, procedure=data, eos=EOS,
                                         servicedesk=SERVICEDESK, bureau=BUREAU)
        assert _who(notices) == [("servicedesk", "email")]


@pytest.mark.parametrize("origin", [Origin.EO_REPORT, Origin.OPERATOR])
def test_scenario_1_reaches_only_that_eo_by_its_preferred_channel(origin: Origin) -> None:
    data = procedure(S1, eori="LU0000000003", origin=origin)
    notices = plan_procedure_notices(event_type=OPENED.value, procedure=data, eos=EOS, servicedesk=SERVICEDESK,
                                     bureau=BUREAU)
    assert _who(notices) == [("LU0000000003", "webhook"), ("servicedesk", "email")]


@pytest.mark.parametrize("event_type", [OPENED, UPDATED, CLOSED])
def test_scenario_1_detected_also_emails_the_eo_whose_system_may_be_down(event_type: EventType) -> None:
    data = procedure(S1, eori="LU0000000003", origin=Origin.DETECTED)
    notices = plan_procedure_notices(event_type=event_type.value, procedure=data, eos=EOS, servicedesk=SERVICEDESK,
                                     bureau=None)
    assert _who(notices) == [("LU0000000003", "webhook"), ("LU0000000003", "email"), ("servicedesk", "email")]


def test_unknown_eo_or_no_servicedesk_reaches_nobody() -> None:
    data = procedure(S1, eori="LU9999999999")
    assert plan_procedure_notices(event_type=OPENED.value, procedure=data, eos=EOS, servicedesk=None,
                                  bureau=None) == []


def test_own_scenario_1_procedure_is_carried_to_national_notices() -> None:
    eos = [EoContact("LU1", Language.EN, webhook_url="https://x.example/h", own_procedure_id="p-own")]
    (notice,) = plan_procedure_notices(event_type=CLOSED.value, procedure=procedure(S2), eos=eos, servicedesk=None,
                                       bureau=None)
    assert notice.own_procedure_id == "p-own"


def test_advisories_are_for_the_servicedesk_alone() -> None:
    assert _who(plan_advisory_notices(servicedesk=SERVICEDESK)) == [("servicedesk", "email")]
    assert plan_advisory_notices(servicedesk=None) == []
    with pytest.raises(ValueError, match="not a procedure event"):
        plan_procedure_notices(event_type=EventType.ADVISORY_RAISED.value, procedure=procedure(S2), eos=EOS,
                               servicedesk=SERVICEDESK, bureau=None)


@pytest.mark.parametrize("event_type", ["luccs.eo.upserted", "luccs.availability.changed", "nonsense"])
def test_events_that_are_no_notice_are_refused(event_type: str) -> None:
    with pytest.raises(ValueError, match="no notice"):
        notice_kind(event_type)


def test_situation_knows_when_ntp_is_down() -> None:
    assert not Situation().ntp_down
    assert not Situation("p", S2).ntp_down
    assert Situation("p", S3).ntp_down
    assert Situation(ntp_advisory=True).ntp_down


def test_idempotency_key_and_lanes() -> None:
    assert idempotency_key("ev-1", "LU1", DeliveryChannel.WEBHOOK) == "ev-1:LU1:webhook"
    assert idempotency_key("ev-1", "LU1", DeliveryChannel.EMAIL) != idempotency_key("ev-1", "LU1",
                                                                                    DeliveryChannel.WEBHOOK)
    assert lane_of(DeliveryChannel.WEBHOOK, "https://Hooks.Example.com/a") == "hooks.example.com:443"
    assert lane_of(DeliveryChannel.WEBHOOK, "http://127.0.0.1:8080/b") == "127.0.0.1:8080"
    assert lane_of(DeliveryChannel.EMAIL, "eo@example.lu") == "smtp"


# --- retries ----------------------------------------------------------------------------------------------

POLICY = delivery_retry_policy(max_attempts=6, max_age_s=3600, base_s=1.0, max_delay_s=300.0)


class _Edge(random.Random):
    """Draws the bottom or the top of every range."""

    def __init__(self, top: bool) -> None:
        super().__init__()
        self.top = top

    def uniform(self, a: float, b: float) -> float:
        return b if self.top else a


@FAST
@given(attempt=st.integers(min_value=1, max_value=5), seed=st.integers(0, 2**32), elapsed=st.floats(0, 3000))
def test_retry_waits_within_the_exponential_window(attempt: int, seed: int, elapsed: float) -> None:
    planned = NOW - timedelta(seconds=elapsed)
    when = next_attempt_at(policy=POLICY, attempt=attempt, planned_at=planned, now=NOW, rng=random.Random(seed))
    assert when is not None
    delay = (when - NOW).total_seconds()
    assert 0 <= delay <= min(300.0, 2 ** (attempt - 1)) + 1e-6
    assert when <= planned + timedelta(seconds=3600)


@pytest.mark.parametrize(("attempt", "top"), [(1, 1.0), (2, 2.0), (5, 16.0), (9, 256.0), (10, 300.0)])
def test_the_window_doubles_up_to_the_cap_and_the_jitter_spans_all_of_it(attempt: int, top: float) -> None:
    policy = delivery_retry_policy(max_attempts=20, max_age_s=10**6, base_s=1.0, max_delay_s=300.0)

    def delay(top_of_the_range: bool) -> float:
        when = next_attempt_at(policy=policy, attempt=attempt, planned_at=NOW, now=NOW, rng=_Edge(top_of_the_range))
        assert when is not None
        return (when - NOW).total_seconds()

    assert (delay(False), delay(True)) == (0.0, top)


def test_a_retry_is_never_scheduled_beyond_the_age_limit() -> None:
    planned = NOW - timedelta(seconds=3599)
    assert next_attempt_at(policy=POLICY, attempt=5, planned_at=planned, now=NOW, rng=_Edge(True)) == (
        planned + timedelta(seconds=3600))


def test_retries_are_spread_not_synchronised() -> None:
    rng = random.Random(7)
    delays = {next_attempt_at(policy=POLICY, attempt=5, planned_at=NOW, now=NOW, rng=rng) for _ in range(50)}
    assert len(delays) > 40


@pytest.mark.parametrize("attempt", [6, 7, 100])
def test_no_retry_after_max_attempts(attempt: int) -> None:
    assert next_attempt_at(policy=POLICY, attempt=attempt, planned_at=NOW, now=NOW) is None


def test_no_retry_after_max_age() -> None:
    old = NOW - timedelta(seconds=3600)
    assert next_attempt_at(policy=POLICY, attempt=1, planned_at=old, now=NOW) is None
    assert next_attempt_at(policy=POLICY, attempt=1, planned_at=old + timedelta(seconds=1), now=NOW) is not None


def test_very_late_attempts_stay_capped() -> None:
    policy = delivery_retry_policy(max_attempts=5000, max_age_s=10**9, base_s=1.0, max_delay_s=300.0)
    when = next_attempt_at(policy=policy, attempt=1100, planned_at=NOW, now=NOW)
    assert when is not None and when - NOW <= timedelta(seconds=300)


# --- webhook URL rules ------------------------------------------------------------------------------------


@pytest.mark.parametrize("url", ["https://hooks.example.com/luccs", "https://8.8.8.8/hook",
                                 "https://[2001:4860:4860::8888]/hook", "https://eo.example.lu:8443/p?x=1"])
def test_public_https_urls_are_allowed(url: str) -> None:
    assert webhook_url_problem(url, allow_insecure=False, allow_private=False) is None


def test_http_is_refused_unless_insecure_is_allowed() -> None:
    problem = webhook_url_problem("http://hooks.example.com/x", allow_insecure=False, allow_private=False)
    assert problem is not None and "https" in problem
    assert webhook_url_problem("http://hooks.example.com/x", allow_insecure=True, allow_private=False) is None


@pytest.mark.parametrize("host", [
    "127.0.0.1", "127.8.9.10", "10.1.2.3", "172.16.0.1", "192.168.1.20", "169.254.169.254", "0.0.0.0",
    "100.64.0.1", "224.0.0.1", "[::1]", "[fe80::1]", "[fc00::1]", "[::ffff:127.0.0.1]", "localhost",
    "LOCALHOST", "localhost.", "localhost.localdomain", "api.localhost", "127.1", "2130706433", "0x7f000001",
    "0177.0.0.1",
])
def test_loopback_private_and_link_local_targets_are_refused(host: str) -> None:
    url = f"https://{host}:8443/hook"
    problem = webhook_url_problem(url, allow_insecure=False, allow_private=False)
    assert problem is not None and "allow_private_webhooks" in problem
    assert webhook_url_problem(url, allow_insecure=False, allow_private=True) is None


@pytest.mark.parametrize("url", ["ftp://h.example/x", "file:///etc/passwd", "hooks.example.com/x", "https:///x", "",
                                 "javascript:alert(1)", "https://h.example:99999/x"])
def test_non_http_urls_are_refused_whatever_the_allowances(url: str) -> None:
    problem = webhook_url_problem(url, allow_insecure=True, allow_private=True)
    assert problem is not None and "URL" in problem


@pytest.mark.parametrize("address", ["127.0.0.1", "10.0.0.5", "::1", "fe80::1", "::ffff:10.0.0.1", "169.254.1.1"])
def test_resolved_private_addresses_are_refused_and_name_the_host(address: str) -> None:
    problem = address_problem(address, allow_private=False, host="hooks.example.com")
    assert problem is not None and f"hooks.example.com resolves to {address.replace('::ffff:', '')}" in problem
    assert address_problem(address, allow_private=True, host="hooks.example.com") is None


def test_resolved_public_addresses_are_allowed() -> None:
    assert address_problem("8.8.8.8", allow_private=False, host="dns.google") is None
    assert address_problem("2001:4860:4860::8888", allow_private=False) is None


@pytest.mark.parametrize("host", ["127.1", "2130706433", "0x7f000001"])
def test_shorthand_literals_really_resolve_to_loopback(host: str) -> None:
    """Why the URL rules parse these: the system resolver turns them into 127.0.0.1 without any DNS."""
    resolved = socket.getaddrinfo(host, 443, proto=socket.IPPROTO_TCP, flags=socket.AI_NUMERICHOST)[0][4][0]
    assert resolved == "127.0.0.1"
