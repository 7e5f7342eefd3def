"""Broadcasts, pure parts: who gets one, in which words, and when one may be sent."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from pydantic import ValidationError

from services.notifier.broadcasts import broadcast_notice, plan_broadcast_notices
from services.notifier.domain import EoContact
from services.procedure.domain import broadcast_refusal
from services.procedure.schemas import BroadcastBody
from shared.events import (
    Broadcast,
    BroadcastAuthor,
    DeliveryChannel,
    Language,
    LocalisedText,
    ProcedureData,
    ProcedureState,
    Scenario,
    Scope,
)

TEXT = LocalisedText(fr="bonjour", en="hello", de="hallo")
EOS = [
    EoContact(eori="LU3", language=Language.DE, webhook_url="https://three.example/hook", email="3@x.example"),
    EoContact(eori="LU1", language=Language.FR, webhook_url=None, email="1@x.example"),
    EoContact(eori="LU2", language=Language.EN, webhook_url=None, email=None),
]


def _procedure(scope: Scope, eori: str | None = None) -> ProcedureData:
    scenario = Scenario.EO_B2G_UNAVAILABLE if scope == Scope.EO else Scenario.LUCCS_UNAVAILABLE
    return ProcedureData(procedure_id="p", scenario=scenario, scope=scope, eori=eori, state=ProcedureState.OPEN,
                         reason="r", opened_at=datetime.now(UTC))


def test_a_national_broadcast_goes_to_every_eo_by_webhook_else_e_mail() -> None:
    planned = plan_broadcast_notices(procedure=_procedure(Scope.NATIONAL), eos=EOS)
    assert [(n.eori, n.channel, n.language) for n in planned] == [
        ("LU1", DeliveryChannel.EMAIL, Language.FR),
        ("LU3", DeliveryChannel.WEBHOOK, Language.DE),
    ]  # LU2 has no address: nothing to plan


def test_a_scenario_1_broadcast_goes_to_that_eo_only() -> None:
    planned = plan_broadcast_notices(procedure=_procedure(Scope.EO, "LU3"), eos=EOS)
    assert [n.eori for n in planned] == ["LU3"]


@pytest.mark.parametrize("language", list(Language))
def test_the_notice_is_the_authors_text_in_the_eos_language(language: Language) -> None:
    broadcast = Broadcast(broadcast_id="b", author=BroadcastAuthor.BUREAU, text=TEXT, sent_at=datetime.now(UTC))
    notice = broadcast_notice(broadcast, language)
    assert notice.message == TEXT.in_language(language)
    assert "Bureau de recette Douanes" in notice.subject


def test_only_an_open_procedure_takes_a_broadcast() -> None:
    assert broadcast_refusal(ProcedureState.OPEN) is None
    assert "proposed" in (broadcast_refusal(ProcedureState.PROPOSED) or "")
    assert "closed" in (broadcast_refusal(ProcedureState.CLOSED) or "")


@pytest.mark.parametrize(("text", "named"), [
    ({"fr": "a", "en": "b"}, "missing in de"),
    ({"en": "b"}, "missing in fr, de"),
    ({"fr": "a", "en": "b", "de": "c", "lb": "d"}, "unknown language(s) lb"),
])
def test_a_broadcast_names_the_language_missing(text: dict[str, str], named: str) -> None:
    with pytest.raises(ValidationError, match=named.replace("(", r"\(").replace(")", r"\)")):
        BroadcastBody.model_validate({"text": text, "author": "servicedesk"})
