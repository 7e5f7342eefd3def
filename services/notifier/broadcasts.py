"""Broadcasts: the Servicedesk's or the Bureau's own words to every EO a procedure concerns. Pure.

A broadcast reaches the EOs its procedure concerns (every registered EO for a national procedure, the one
EO of a scenario-1 procedure) on the channel the procedure's notices take: the webhook when the EO
registered one, else e-mail. The message is the author's text in the EO's language, unchanged; only the
subject line is ours.
"""

from __future__ import annotations

from collections.abc import Iterable

from services.notifier.domain import Audience, EoContact, PlannedNotice
from services.notifier.notices import Notice
from shared.events import Broadcast, BroadcastAuthor, DeliveryChannel, Language, ProcedureData, Scope

__all__ = ["broadcast_notice", "plan_broadcast_notices", "usual_channel_notices"]

_SUBJECTS = {
    BroadcastAuthor.SERVICEDESK: {
        Language.FR: "Message du Servicedesk eDouane",
        Language.EN: "Message from the Servicedesk eDouane",
        Language.DE: "Mitteilung des Servicedesk eDouane",
    },
    BroadcastAuthor.BUREAU: {
        Language.FR: "Recommandations du Bureau de recette Douanes",
        Language.EN: "Recommendations of the Bureau de recette Douanes",
        Language.DE: "Empfehlungen des Bureau de recette Douanes",
    },
}


def plan_broadcast_notices(*, procedure: ProcedureData, eos: Iterable[EoContact]) -> list[PlannedNotice]:
    """One notice per EO concerned (sorted by EORI): by webhook when registered, else by e-mail; none for an
    EO with neither."""
    concerned = (
        sorted(eos, key=lambda eo: eo.eori) if procedure.scope == Scope.NATIONAL
        else [eo for eo in eos if eo.eori == procedure.eori]
    )
    return usual_channel_notices(concerned)


def usual_channel_notices(eos: Iterable[EoContact]) -> list[PlannedNotice]:
    """One notice per EO, in the order given, on the channel procedure notices take: the webhook when
    registered, else e-mail; none for an EO with neither."""
    notices: list[PlannedNotice] = []
    for eo in eos:
        channel, address = (
            (DeliveryChannel.WEBHOOK, eo.webhook_url) if eo.webhook_url else (DeliveryChannel.EMAIL, eo.email)
        )
        if address:
            notices.append(PlannedNotice(audience=Audience.EO, recipient_key=eo.eori, channel=channel,
                                         address=address, language=eo.language, eori=eo.eori))
    return notices


def broadcast_notice(broadcast: Broadcast, language: Language) -> Notice:
    """The notice an EO reading ``language`` gets: the author's subject line and its text in that language."""
    return Notice(subject=_SUBJECTS[broadcast.author][language], message=broadcast.text.in_language(language))
