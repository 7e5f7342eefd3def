"""The EOs' public status page ``GET /public`` and its Atom feed ``GET /public/feed.atom``: no login.

Reads only what :mod:`services.procedure.public` may show (columns chosen here: never a reason, an EORI or
evidence), lets it decide, and words the result with :mod:`services.procedure.public_texts`. The page is
rendered on the server, with one inline style and no script; the feed is written with ElementTree.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Annotated
from zoneinfo import ZoneInfo

from fastapi import APIRouter, Header, Request
from fastapi.responses import HTMLResponse, Response
from jinja2 import Environment, FileSystemLoader, StrictUndefined, select_autoescape
from sqlalchemy import or_, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from services.procedure import public
from services.procedure.api.deps import ClockDep, ServiceDep, SessionsDep
from services.procedure.handlers import ProcedureService
from services.procedure.maintenance import Window
from services.procedure.models import AdvisoryRow, MaintenanceRow, ProcedureRow, TimelineRow
from services.procedure.public import (
    ChannelState,
    ProcedureFacts,
    PublicAdvice,
    PublicBroadcast,
    PublicProcedure,
    PublicWindow,
)
from services.procedure.public_texts import PHRASES
from shared.auth import Caller
from shared.events import (
    AdvisoryKind,
    Component,
    Language,
    LocalisedText,
    MaintenanceState,
    ProcedureState,
    Scope,
)
from shared.pages import page_headers

__all__ = ["router"]

router = APIRouter(tags=["pages"])
LUXEMBOURG = ZoneInfo("Europe/Luxembourg")
ATOM = "http://www.w3.org/2005/Atom"
_templates = Environment(
    loader=FileSystemLoader(Path(__file__).with_name("templates")),
    autoescape=select_autoescape(default=True),
    undefined=StrictUndefined,
)


def _local(moment: datetime | None) -> str:
    return moment.astimezone(LUXEMBOURG).strftime("%Y-%m-%d %H:%M") if moment else "-"


_templates.filters["local"] = _local


@dataclass(frozen=True)
class PublicSituation:
    """Everything the page and the feed show, decided."""

    channels: dict[Component, ChannelState]
    advice: PublicAdvice
    in_force: PublicProcedure | None
    procedures: list[PublicProcedure]
    windows: list[PublicWindow]
    """Scheduled and active windows (the page)."""
    feed_windows: list[PublicWindow]
    broadcasts: list[PublicBroadcast]


async def read_situation(*, service: ProcedureService, sessions: async_sessionmaker[AsyncSession],
                         now: datetime) -> PublicSituation:
    """Read the public facts (only the columns EOs may see) and decide what the page says."""
    since = now - timedelta(days=public.HISTORY_DAYS)
    async with sessions() as session:
        procedure_rows = (await session.execute(
            select(ProcedureRow.id, ProcedureRow.scenario, ProcedureRow.scope, ProcedureRow.state,
                   ProcedureRow.origin, ProcedureRow.opened_at, ProcedureRow.closed_at)
            .where(ProcedureRow.scope == Scope.NATIONAL)
            .where(or_(ProcedureRow.state == ProcedureState.OPEN, ProcedureRow.closed_at >= since))
        )).all()
        window_rows = (await session.execute(
            select(MaintenanceRow.id, MaintenanceRow.component, MaintenanceRow.starts_at, MaintenanceRow.ends_at,
                   MaintenanceRow.state, MaintenanceRow.message, MaintenanceRow.updated_at)
            .where(or_(MaintenanceRow.state.in_([MaintenanceState.SCHEDULED, MaintenanceState.ACTIVE]),
                       MaintenanceRow.updated_at >= since))
        )).all()
        broadcast_rows = (await session.execute(
            select(TimelineRow.id, TimelineRow.procedure_id, TimelineRow.at, TimelineRow.detail)
            .join(ProcedureRow, ProcedureRow.id == TimelineRow.procedure_id)
            .where(ProcedureRow.scope == Scope.NATIONAL, TimelineRow.kind == "broadcast",
                   TimelineRow.at >= since)
        )).all()
        ntp_advisory = (await session.scalar(
            select(AdvisoryRow.id).where(AdvisoryRow.active.is_(True),
                                         AdvisoryRow.kind == AdvisoryKind.NTP_UNAVAILABLE).limit(1)
        )) is not None
    procedures = public.public_procedures(
        [ProcedureFacts(procedure_id=r.id, scenario=r.scenario, scope=r.scope, state=r.state, origin=r.origin,
                        opened_at=r.opened_at, closed_at=r.closed_at) for r in procedure_rows],
        now=now,
    )
    windows = [
        PublicWindow(maintenance_id=r.id, component=r.component, starts_at=r.starts_at, ends_at=r.ends_at,
                     state=r.state,
                     message=LocalisedText(**r.message) if r.message else None, updated_at=r.updated_at)
        for r in window_rows
    ]
    active = [Window(maintenance_id=w.maintenance_id, component=w.component, starts_at=w.starts_at,
                     ends_at=w.ends_at, state=w.state) for w in windows]
    observed = {c: v.state for c, v in service.views(now=now).national.items()}
    in_force = next((p for p in procedures if p.in_force), None)
    channels = public.channel_states(observed, windows=active, ntp_advisory=ntp_advisory,
                                     national=in_force.scenario if in_force else None)
    broadcasts = [b for r in broadcast_rows
                  if (b := public.public_broadcast(entry_id=r.id, procedure_id=r.procedure_id, at=r.at,
                                                   detail=r.detail)) is not None]
    return PublicSituation(
        channels=channels,
        advice=public.public_advice(ada_b2g=channels[Component.ADA_B2G], ntp=channels[Component.NTP],
                                    national=in_force.scenario if in_force else None),
        in_force=in_force,
        procedures=procedures,
        windows=public.public_windows(windows),
        feed_windows=public.feed_windows(windows, now=now),
        broadcasts=sorted(broadcasts, key=lambda b: b.sent_at, reverse=True),
    )


AcceptLanguage = Annotated[str | None, Header()]


@router.get("/public", response_class=HTMLResponse,
            responses={200: {"content": {"text/html": {"schema": {"type": "string"}}}}})
async def public_page(
    _caller: Caller, service: ServiceDep, sessions: SessionsDep, clock: ClockDep,
    lang: str | None = None, accept_language: AcceptLanguage = None,
) -> HTMLResponse:
    """The EOs' status page: channels, what to do now, maintenance, the last 30 days (no login)."""
    language = public.choose_language(lang, accept_language)
    now = clock()
    situation = await read_situation(service=service, sessions=sessions, now=now)
    html = _templates.get_template("public.html").render(
        s=situation, t=PHRASES[language], lang=language.value, languages=[(x.value, PHRASES[x]["lang_name"])
                                                                          for x in Language],
        now=now,
    )
    return HTMLResponse(html, headers=page_headers(html) | {"Content-Language": language.value,
                                                            "Vary": "Accept-Language"})


@router.get("/public/feed.atom", response_class=Response,
            responses={200: {"description": "Atom feed (RFC 4287)",
                             "content": {"application/atom+xml": {"schema": {"type": "string"}}}}})
async def public_feed(
    _caller: Caller, request: Request, service: ServiceDep, sessions: SessionsDep, clock: ClockDep,
    lang: str | None = None, accept_language: AcceptLanguage = None,
) -> Response:
    """The EOs' Atom feed: national procedures opened and closed, broadcasts, maintenance windows (no login)."""
    language = public.choose_language(lang, accept_language)
    now = clock()
    situation = await read_situation(service=service, sessions=sessions, now=now)
    page = str(request.url_for("public_page").include_query_params(lang=language.value))
    body = atom_feed(situation, language=language, page_url=page, now=now)
    return Response(body, media_type="application/atom+xml; charset=utf-8",
                    headers={"Content-Language": language.value, "Vary": "Accept-Language",
                             "X-Content-Type-Options": "nosniff", "Cache-Control": "no-store"})


def _when(moment: datetime) -> str:
    return moment.isoformat().replace("+00:00", "Z")


def atom_feed(situation: PublicSituation, *, language: Language, page_url: str, now: datetime) -> bytes:
    """The situation as an Atom (RFC 4287) document in ``language``, newest entry first."""
    t = PHRASES[language]
    entries: list[tuple[datetime, str, str, str]] = []  # (updated, id, title, text)
    for p in situation.procedures:
        scenario = t[f"scenario_{p.scenario.value}"] + (f" ({t['planned']})" if p.planned else "")
        entries.append((p.opened_at, f"urn:luccs:procedure:{p.procedure_id}:opened",
                        f"{t['feed_opened']}: {scenario}", f"{t['feed_opened']}: {scenario}."))
        if p.closed_at is not None:
            entries.append((p.closed_at, f"urn:luccs:procedure:{p.procedure_id}:closed",
                            f"{t['feed_closed']}: {scenario}", t["feed_closed_summary"]))
    for b in situation.broadcasts:
        entries.append((b.sent_at, f"urn:luccs:broadcast:{b.entry_id}", t[f"feed_broadcast_{b.author.value}"],
                        b.text.in_language(language)))
    for w in situation.feed_windows:
        title = (f"{t['feed_maintenance']} ({t['mstate_' + w.state.value]}): {t['component_' + w.component.value]}"
                 f", {t['from']} {_local(w.starts_at)} {t['to']} {_local(w.ends_at)} ({t['times']})")
        entries.append((w.updated_at, f"urn:luccs:maintenance:{w.maintenance_id}", title,
                        w.message.in_language(language) if w.message else title))
    entries.sort(key=lambda e: e[0], reverse=True)

    ET.register_namespace("", ATOM)
    feed = ET.Element(f"{{{ATOM}}}feed", {"{http://www.w3.org/XML/1998/namespace}lang": language.value})
    ET.SubElement(feed, f"{{{ATOM}}}id").text = f"urn:luccs:public-feed:{language.value}"
    ET.SubElement(feed, f"{{{ATOM}}}title").text = t["feed_title"]
    ET.SubElement(feed, f"{{{ATOM}}}updated").text = _when(entries[0][0] if entries else now)
    ET.SubElement(feed, f"{{{ATOM}}}link", {"rel": "alternate", "type": "text/html", "href": page_url})
    author = ET.SubElement(feed, f"{{{ATOM}}}author")
    ET.SubElement(author, f"{{{ATOM}}}name").text = "Servicedesk eDouane"
    for updated, entry_id, title, text in entries:
        entry = ET.SubElement(feed, f"{{{ATOM}}}entry")
        ET.SubElement(entry, f"{{{ATOM}}}id").text = entry_id
        ET.SubElement(entry, f"{{{ATOM}}}title").text = title
        ET.SubElement(entry, f"{{{ATOM}}}updated").text = _when(updated)
        ET.SubElement(entry, f"{{{ATOM}}}link", {"rel": "alternate", "type": "text/html", "href": page_url})
        ET.SubElement(entry, f"{{{ATOM}}}summary", {"type": "text"}).text = text
    document: bytes = ET.tostring(feed, encoding="utf-8", xml_declaration=True)
    return document
