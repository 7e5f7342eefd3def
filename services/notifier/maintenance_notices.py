"""Announcements of maintenance windows to EOs: who is told and in which words. Pure.

Every registered EO is told (a window on the ADA B2G, NTP or both concerns all of them), on the channel
the procedure notices take: the webhook when registered, else e-mail. The words say what will be
unavailable, when (Luxembourg time), and what to do meanwhile: never a channel the window takes down.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from zoneinfo import ZoneInfo

from services.notifier.broadcasts import usual_channel_notices
from services.notifier.domain import EoContact, PlannedNotice
from services.notifier.notices import Notice
from shared.events import EventType, Language, MaintainedComponent, MaintenanceData

__all__ = ["maintenance_notice", "plan_maintenance_notices"]

LUXEMBOURG = ZoneInfo("Europe/Luxembourg")

_WHAT = {
    Language.FR: {MaintainedComponent.ADA_B2G: "le canal B2G (AS4) de l'ADA",
                  MaintainedComponent.NTP: "le National Trader Portal (NTP)",
                  MaintainedComponent.LUCCS: "LUCCS (canal B2G et NTP)"},
    Language.EN: {MaintainedComponent.ADA_B2G: "the ADA's B2G (AS4) channel",
                  MaintainedComponent.NTP: "the National Trader Portal (NTP)",
                  MaintainedComponent.LUCCS: "LUCCS (B2G channel and NTP)"},
    Language.DE: {MaintainedComponent.ADA_B2G: "der B2G-Kanal (AS4) der ADA",
                  MaintainedComponent.NTP: "das National Trader Portal (NTP)",
                  MaintainedComponent.LUCCS: "LUCCS (B2G-Kanal und NTP)"},
}
_ADVICE = {
    Language.FR: {MaintainedComponent.ADA_B2G: "déposez vos déclarations via le NTP, qui reste ouvert.",
                  MaintainedComponent.NTP: "continuez à déposer vos déclarations par votre système (B2G).",
                  MaintainedComponent.LUCCS: "contactez le Bureau de recette Douanes et suivez ses recommandations."},
    Language.EN: {MaintainedComponent.ADA_B2G: "lodge your declarations through NTP, which stays open.",
                  MaintainedComponent.NTP: "keep lodging your declarations from your own system (B2G).",
                  MaintainedComponent.LUCCS: "contact the Bureau de recette Douanes and follow its recommendations."},
    Language.DE: {MaintainedComponent.ADA_B2G: "reichen Sie Ihre Anmeldungen über das NTP ein, das geöffnet bleibt.",
                  MaintainedComponent.NTP: "reichen Sie Ihre Anmeldungen weiter über Ihr eigenes System (B2G) ein.",
                  MaintainedComponent.LUCCS: "wenden Sie sich an das Bureau de recette Douanes und folgen Sie "
                                             "dessen Empfehlungen."},
}
_SUBJECT = {
    Language.FR: {EventType.MAINTENANCE_SCHEDULED: "Maintenance planifiée", EventType.MAINTENANCE_CHANGED:
                  "Maintenance planifiée modifiée", EventType.MAINTENANCE_CANCELLED: "Maintenance annulée",
                  EventType.MAINTENANCE_REMINDER: "Rappel : maintenance planifiée"},
    Language.EN: {EventType.MAINTENANCE_SCHEDULED: "Planned maintenance", EventType.MAINTENANCE_CHANGED:
                  "Planned maintenance changed", EventType.MAINTENANCE_CANCELLED: "Maintenance cancelled",
                  EventType.MAINTENANCE_REMINDER: "Reminder: planned maintenance"},
    Language.DE: {EventType.MAINTENANCE_SCHEDULED: "Geplante Wartung", EventType.MAINTENANCE_CHANGED:
                  "Geplante Wartung geändert", EventType.MAINTENANCE_CANCELLED: "Wartung abgesagt",
                  EventType.MAINTENANCE_REMINDER: "Erinnerung: geplante Wartung"},
}
_BODY = {
    Language.FR: ("{what} sera indisponible du {start} au {end} (heure de Luxembourg). Pendant cette période, {advice}",
                  "La maintenance de {what} prévue du {start} au {end} est annulée : rien ne change pour vous.",
                  "Annoncée auparavant : du {start} au {end}."),
    Language.EN: ("{what} will be unavailable from {start} to {end} (Luxembourg time). Meanwhile, {advice}",
                  "The maintenance of {what} planned from {start} to {end} is cancelled: nothing changes for you.",
                  "Announced before: from {start} to {end}."),
    Language.DE: ("{what} ist vom {start} bis {end} (Luxemburger Zeit) nicht verfügbar. In dieser Zeit {advice}",
                  "Die geplante Wartung von {what} vom {start} bis {end} ist abgesagt: für Sie ändert sich nichts.",
                  "Zuvor angekündigt: vom {start} bis {end}."),
}


def plan_maintenance_notices(*, eos: Iterable[EoContact]) -> list[PlannedNotice]:
    """Every registered EO, by its usual channel, sorted by EORI."""
    return usual_channel_notices(sorted(eos, key=lambda eo: eo.eori))


def _local(moment: datetime) -> str:
    return moment.astimezone(LUXEMBOURG).strftime("%d.%m.%Y %H:%M")


def maintenance_notice(*, event_type: str, window: MaintenanceData, language: Language) -> Notice:
    """The announcement of ``window`` (scheduled, changed, cancelled or a reminder) in ``language``."""
    kind = EventType(event_type)
    what = _WHAT[language][window.component]
    start, end = _local(window.starts_at), _local(window.ends_at)
    planned, cancelled, before = _BODY[language]
    if kind == EventType.MAINTENANCE_CANCELLED:
        lines = [cancelled.format(what=what, start=start, end=end)]
    else:
        lines = [planned.format(what=what, start=start, end=end, advice=_ADVICE[language][window.component])]
        if kind == EventType.MAINTENANCE_CHANGED and window.previous_starts_at and window.previous_ends_at:
            lines.append(before.format(start=_local(window.previous_starts_at), end=_local(window.previous_ends_at)))
        if window.message is not None:
            lines.append(window.message.in_language(language))
    subject = f"{_SUBJECT[language][kind]}: {what[:1].upper()}{what[1:]}, {start} - {end}"
    return Notice(subject=subject, message="\n\n".join(lines))
