"""The live status page at ``/``: for the Servicedesk and ops, read-only, no external assets.

Rendered on the server (readable without JavaScript); a few lines of plain JavaScript re-render the live
part whenever the server-sent-event stream announces a change.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import HTMLResponse
from jinja2 import Environment, FileSystemLoader, StrictUndefined, select_autoescape

from services.procedure.api.deps import NotifierSummaryDep, ServiceDep, SessionsDep
from services.procedure.queries import procedure_detail, status_snapshot
from shared.auth import Caller
from shared.pages import page_headers

router = APIRouter(tags=["pages"])
_templates = Environment(
    loader=FileSystemLoader(Path(__file__).with_name("templates")),
    autoescape=select_autoescape(default=True),
    undefined=StrictUndefined,
)


def _when(value: datetime | None) -> str:
    return value.strftime("%Y-%m-%d %H:%M:%S UTC") if value else "-"


_templates.filters["when"] = _when


@router.get("/", response_class=HTMLResponse, summary="The live status page (HTML) for the Servicedesk and ops",
            responses={200: {"content": {"text/html": {"schema": {"type": "string"}}}}})
async def status_page(
    caller: Caller,
    service: ServiceDep,
    sessions: SessionsDep,
    summary: NotifierSummaryDep,
    fragment: bool = False,
) -> HTMLResponse:
    snapshot = await status_snapshot(service, sessions, reader=caller)
    details = [await procedure_detail(sessions, p.procedure_id) for p in snapshot.procedures]
    template = _templates.get_template("status.html")
    html = template.render(
        snapshot=snapshot,
        procedures=details,
        deliveries=await summary.read() if summary is not None else None,
        fragment=fragment,
    )
    return HTMLResponse(html, headers=page_headers(html))
