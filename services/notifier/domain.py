"""Who must be told what, in which language, and when to try again. Pure: no I/O, clock passed in."""

from __future__ import annotations

import ipaddress
import random
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from urllib.parse import urlsplit

from shared.events import EventType, Language, ProcedureData, Scenario, Scope


@dataclass(frozen=True)
class Recipient:
    eori: str
    language: Language
    webhook_url: str | None


def recipients(event_type: str, procedure: ProcedureData, eos: Iterable[Recipient]) -> list[Recipient]:
    """EOs to notify of a procedure event: all of them for a national one, the one concerned for scenario 1.

    Proposed procedures go to the Servicedesk only, never to EOs.
    """
    if event_type == EventType.PROCEDURE_PROPOSED:
        return []
    if procedure.scope == Scope.NATIONAL:
        return sorted(eos, key=lambda r: r.eori)
    return [r for r in eos if r.eori == procedure.eori]


@dataclass(frozen=True)
class Notice:
    subject: str
    message: str


_SCENARIO_NAME = {
    Language.EN: {
        Scenario.EO_B2G_UNAVAILABLE: "your B2G (AS4) system is unavailable",
        Scenario.ADA_B2G_UNAVAILABLE: "the customs B2G (AS4) channel of LUCCS is unavailable",
        Scenario.LUCCS_UNAVAILABLE: "LUCCS is unavailable (B2G and NTP)",
    },
    Language.FR: {
        Scenario.EO_B2G_UNAVAILABLE: "votre système B2G (AS4) est indisponible",
        Scenario.ADA_B2G_UNAVAILABLE: "le canal B2G (AS4) de LUCCS de l'ADA est indisponible",
        Scenario.LUCCS_UNAVAILABLE: "LUCCS est indisponible (B2G et NTP)",
    },
    Language.DE: {
        Scenario.EO_B2G_UNAVAILABLE: "Ihr B2G-System (AS4) ist nicht verfügbar",
        Scenario.ADA_B2G_UNAVAILABLE: "der B2G-Kanal (AS4) von LUCCS der Zollverwaltung ist nicht verfügbar",
        Scenario.LUCCS_UNAVAILABLE: "LUCCS ist nicht verfügbar (B2G und NTP)",
    },
}

_WHAT_TO_DO = {
    Language.EN: {
        Scenario.EO_B2G_UNAVAILABLE: "The Servicedesk eDouane has been told. Until your system is back, lodge "
        "your customs declarations through the National Trader Portal (NTP).",
        Scenario.ADA_B2G_UNAVAILABLE: "The fallback procedure is in force. Lodge your customs declarations "
        "through the National Trader Portal (NTP), which remains available.",
        Scenario.LUCCS_UNAVAILABLE: "The fallback procedure is in force and NTP cannot be used either. Contact "
        "the Bureau de recette Douanes and follow its recommendations.",
    },
    Language.FR: {
        Scenario.EO_B2G_UNAVAILABLE: "Le Servicedesk eDouane en a été informé. Jusqu'au rétablissement de votre "
        "système, déposez vos déclarations en douane via le National Trader Portal (NTP).",
        Scenario.ADA_B2G_UNAVAILABLE: "La procédure de secours est en vigueur. Déposez vos déclarations en "
        "douane via le National Trader Portal (NTP), qui reste disponible.",
        Scenario.LUCCS_UNAVAILABLE: "La procédure de secours est en vigueur et le NTP n'est pas utilisable non "
        "plus. Contactez le Bureau de recette Douanes et suivez ses recommandations.",
    },
    Language.DE: {
        Scenario.EO_B2G_UNAVAILABLE: "Der Servicedesk eDouane wurde informiert. Bis Ihr System wieder läuft, "
        "reichen Sie Ihre Zollanmeldungen über das National Trader Portal (NTP) ein.",
        Scenario.ADA_B2G_UNAVAILABLE: "Das Ausweichverfahren gilt. Reichen Sie Ihre Zollanmeldungen über das "
        "National Trader Portal (NTP) ein, das weiterhin verfügbar ist.",
        Scenario.LUCCS_UNAVAILABLE: "Das Ausweichverfahren gilt und auch das NTP ist nicht nutzbar. Wenden Sie "
        "sich an das Bureau de recette Douanes und folgen Sie dessen Empfehlungen.",
    },
}

_PHRASES = {
    Language.EN: {
        "opened": "Fallback procedure opened",
        "updated": "Fallback procedure changed",
        "closed": "Fallback procedure closed",
        "because": "Reason",
        "now": "Situation now",
        "was": "Previously",
        "closed_body": "The situation is back to normal: lodge your declarations through B2G (AS4) again.",
        "closed_eo": "The Servicedesk eDouane has been told that your B2G system is restored.",
        "procedure": "Procedure",
        "at": "at",
    },
    Language.FR: {
        "opened": "Procédure de secours ouverte",
        "updated": "Procédure de secours modifiée",
        "closed": "Procédure de secours clôturée",
        "because": "Motif",
        "now": "Situation actuelle",
        "was": "Auparavant",
        "closed_body": "La situation est rétablie : déposez à nouveau vos déclarations via B2G (AS4).",
        "closed_eo": "Le Servicedesk eDouane a été informé du rétablissement de votre système B2G.",
        "procedure": "Procédure",
        "at": "le",
    },
    Language.DE: {
        "opened": "Ausweichverfahren eröffnet",
        "updated": "Ausweichverfahren geändert",
        "closed": "Ausweichverfahren beendet",
        "because": "Grund",
        "now": "Aktuelle Lage",
        "was": "Bisher",
        "closed_body": "Der Normalbetrieb ist wiederhergestellt: Reichen Sie Ihre Anmeldungen wieder über "
        "B2G (AS4) ein.",
        "closed_eo": "Der Servicedesk eDouane wurde über die Wiederherstellung Ihres B2G-Systems informiert.",
        "procedure": "Verfahren",
        "at": "am",
    },
}

_KIND = {
    EventType.PROCEDURE_OPENED: "opened",
    EventType.PROCEDURE_UPDATED: "updated",
    EventType.PROCEDURE_CLOSED: "closed",
}


def render(event_type: str, procedure: ProcedureData, language: Language) -> Notice:
    """The notice an EO reads, in its language: what happened and what to do now."""
    kind = _KIND.get(EventType(event_type))
    if kind is None:
        raise ValueError(f"no EO notice for {event_type}")
    words = _PHRASES[language]
    situation = _SCENARIO_NAME[language][procedure.scenario]
    stamp = procedure.closed_at if kind == "closed" else procedure.opened_at
    when = f" {words['at']} {stamp:%Y-%m-%d %H:%M} UTC" if stamp else ""
    subject = f"LUCCS - {words[kind]}: {situation}"
    lines = [f"{words['procedure']} {procedure.procedure_id}: {words[kind]}{when}."]
    if kind == "closed":
        lines.append(words["closed_body"])
        if procedure.scenario == Scenario.EO_B2G_UNAVAILABLE:
            lines.append(words["closed_eo"])
    else:
        if kind == "updated" and procedure.previous_scenario is not None:
            lines.append(f"{words['was']}: {_SCENARIO_NAME[language][procedure.previous_scenario]}.")
        lines.append(f"{words['now']}: {situation}.")
        lines.append(_WHAT_TO_DO[language][procedure.scenario])
    return Notice(subject=subject, message="\n".join(lines))


def retry_delay(attempt: int, *, base_s: float, max_s: float, rng: random.Random) -> timedelta:
    """Exponential backoff with jitter after failed attempt number ``attempt`` (1-based)."""
    ceiling = min(max_s, base_s * 2 ** (attempt - 1))
    return timedelta(seconds=ceiling / 2 + rng.uniform(0, ceiling / 2))


def next_attempt_at(
    attempt: int, *, now: datetime, max_attempts: int, base_s: float, max_s: float, rng: random.Random
) -> datetime | None:
    """When to try again after failed attempt ``attempt``; None when the delivery must be dead-lettered."""
    if attempt >= max_attempts:
        return None
    return now + retry_delay(attempt, base_s=base_s, max_s=max_s, rng=rng)


def webhook_url_problem(url: str, *, allow_insecure: bool, allow_private: bool) -> str | None:
    """Why a webhook URL must not be called (None if it may): https only, no private targets, by default.

    Only literal addresses and localhost names are recognised; host names are not resolved here.
    """
    parts = urlsplit(url)
    if parts.scheme not in ("https", "http") or not parts.hostname:
        return f"not an http(s) URL: {url!r}"
    if parts.scheme == "http" and not allow_insecure:
        return "webhook URL must use https (notifier.allow_insecure_webhooks is off)"
    if not allow_private and address_is_private(parts.hostname):
        return f"webhook host {parts.hostname} is loopback/private (notifier.allow_private_webhooks is off)"
    return None


def address_is_private(host: str) -> bool:
    if host.lower() in ("localhost", "localhost.localdomain") or host.lower().endswith(".localhost"):
        return True
    try:
        address = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return False
    return not address.is_global
