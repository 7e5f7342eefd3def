"""The Servicedesk console at ``/``: the state of the channels, the procedures in force with their timeline
and fan-out progress, the EO endpoints down, 90 days of availability and 24 hours of response times, in
French, English or German; operators sign in with their token to confirm, withdraw, declare, close, annotate
and broadcast. No external assets.

``/`` is the shell (open to everyone: it holds no data unless reads are open, then the live part too);
``/console/live`` is the live part, rendered for whoever calls it: the page's script fetches it with the
token the operator signed in with (kept in the tab's ``sessionStorage``, sent in the ``Authorization``
header, never in a cookie or URL) whenever the event stream announces a change, and every few seconds while
a procedure's notices are on their way. What a reader may see is decided by the same rules as the API.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Query
from fastapi.responses import HTMLResponse
from jinja2 import Environment, FileSystemLoader, StrictUndefined, select_autoescape

from services.procedure.api.deps import ClockDep, NotifierSummaryDep, ServiceDep, SessionsDep, SettingsDep
from services.procedure.availability import NATIONAL_COMPONENTS, Bucket
from services.procedure.console import availability_cells, certificate_line, latency_chart
from services.procedure.console_data import eo_endpoints_down, procedure_fan_out
from services.procedure.console_texts import PHRASES
from services.procedure.history import history_page, outages_page
from services.procedure.latency_store import latency_slots
from services.procedure.notifier_summary import NotifierUnavailable
from services.procedure.queries import procedure_detail, status_snapshot
from shared.auth import Caller
from shared.errors import NotFound
from shared.events import CertificateExpiry, Language, ProcedureState, Scenario
from shared.pages import page_headers
from shared.roles import Role

router = APIRouter(tags=["pages"])
_templates = Environment(
    loader=FileSystemLoader(Path(__file__).with_name("templates")),
    autoescape=select_autoescape(default=True),
    undefined=StrictUndefined,
)
HISTORY_DAYS = 90


def _when(value: datetime | None) -> str:
    return value.strftime("%Y-%m-%d %H:%M:%S UTC") if value else "-"


def _minutes(seconds: float) -> str:
    return f"{seconds / 60:.0f} min" if seconds >= 60 else f"{seconds:.0f} s"


_templates.filters["when"] = _when
_templates.filters["minutes"] = _minutes
_templates.globals["certificate_line"] = lambda certificate, phrases: certificate_line(
    CertificateExpiry.model_validate(certificate), phrases)


def _language(lang: str | None, default: Language) -> Language:
    try:
        return Language(lang) if lang else default
    except ValueError:
        return default


async def _live(*, caller: Caller, service: ServiceDep, sessions: SessionsDep, summary: NotifierSummaryDep,
                now: datetime) -> dict[str, Any]:
    """What the live part shows to ``caller``."""
    snapshot = await status_snapshot(service, sessions, reader=caller)
    procedures = []
    for active in snapshot.procedures:
        try:
            detail = await procedure_detail(sessions, active.procedure_id)
        except NotFound:  # closed and gone between the two reads
            continue
        progress: Any = None
        if detail.state == ProcedureState.OPEN and summary is not None:
            try:
                progress = await procedure_fan_out(summary, detail.procedure_id)
            except NotifierUnavailable as exc:
                progress = str(exc)
        procedures.append(detail.model_dump() | {"fanout": progress})
    today = now.replace(hour=0, minute=0, second=0, microsecond=0)
    start = today - timedelta(days=HISTORY_DAYS - 1)
    days = await history_page(sessions, bucket=Bucket.DAY, start=start, end=now, now=now,
                              limit=HISTORY_DAYS * len(NATIONAL_COMPONENTS))
    outages = await outages_page(sessions, start=start, end=now, now=now, limit=2000)
    cells = availability_cells(days.items, outages.items)
    slots = await latency_slots(sessions, components=NATIONAL_COMPONENTS, start=now - timedelta(hours=24), end=now,
                                limit=2 * 24 * 12 + 2)
    return {
        "snapshot": snapshot,
        "procedures": procedures,
        "eo_down": await eo_endpoints_down(service, sessions, reader=caller),
        "cells": {c: [cell for cell in cells if cell.component == c] for c in NATIONAL_COMPONENTS},
        "charts": {c: latency_chart([s for s in slots if s.component == c], start=now - timedelta(hours=24), end=now)
                   for c in NATIONAL_COMPONENTS},
        "deliveries": await summary.read() if summary is not None else None,
        "caller": caller,
        "may_operate": caller.role == Role.OPERATOR,
        "may_broadcast": caller.role in (Role.OPERATOR, Role.BUREAU),
    }


def _render(*, fragment: bool, language: Language, live: dict[str, Any] | None) -> HTMLResponse:
    html = _templates.get_template("status.html").render(
        fragment=fragment, live_data=live, t=PHRASES[language], lang=language.value, languages=list(Language),
        phrases=PHRASES, scenarios=list(Scenario),
    )
    return HTMLResponse(html, headers=page_headers(html))


Lang = Annotated[str | None, Query(max_length=2, description="fr, en or de")]


_HTML: dict[int | str, dict[str, Any]] = {200: {"content": {"text/html": {"schema": {"type": "string"}}}}}


@router.get("/", response_class=HTMLResponse, responses=_HTML,
            summary="The Servicedesk console (HTML): live state, actions with a token, fan-out, history")
async def console_page(caller: Caller, service: ServiceDep, sessions: SessionsDep, summary: NotifierSummaryDep,
                       settings: SettingsDep, clock: ClockDep, lang: Lang = None) -> HTMLResponse:
    language = _language(lang, settings.procedure.console_language)
    readable = caller.role != Role.ANONYMOUS or not settings.api.read_requires_token
    live = await _live(caller=caller, service=service, sessions=sessions, summary=summary,
                       now=clock()) if readable else None
    return _render(fragment=False, language=language, live=live)


@router.get("/console/live", response_class=HTMLResponse, responses=_HTML,
            summary="The console's live part (an HTML fragment the page fetches with the signed-in token)")
async def console_live(caller: Caller, service: ServiceDep, sessions: SessionsDep, summary: NotifierSummaryDep,
                       settings: SettingsDep, clock: ClockDep, lang: Lang = None) -> HTMLResponse:
    language = _language(lang, settings.procedure.console_language)
    live = await _live(caller=caller, service=service, sessions=sessions, summary=summary, now=clock())
    return _render(fragment=True, language=language, live=live)

