"""The live status page at ``/``: for the Servicedesk and ops, read-only, no external assets.

Rendered on the server (readable without JavaScript); a few lines of plain JavaScript re-render the live
part whenever the server-sent-event stream announces a change.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
from fastapi import APIRouter
from fastapi.responses import HTMLResponse
from jinja2 import Environment, FileSystemLoader, StrictUndefined, select_autoescape

from services.procedure.api.deps import ServiceDep, SessionsDep, SettingsDep
from services.procedure.queries import procedure_detail, status_snapshot
from shared.auth import Caller
from shared.config import ProcedureSettings

router = APIRouter(include_in_schema=False)
_templates = Environment(
    loader=FileSystemLoader(Path(__file__).with_name("templates")),
    autoescape=select_autoescape(default=True),
    undefined=StrictUndefined,
)


def _when(value: datetime | None) -> str:
    return value.strftime("%Y-%m-%d %H:%M:%S UTC") if value else "-"


_templates.filters["when"] = _when


async def _deliveries(settings: ProcedureSettings) -> dict[str, Any] | None:
    """Counts of the notifier's latest deliveries by status (no EO data), or None when it cannot be asked."""
    notifier_url = settings.notifier_url
    if not notifier_url:
        return None
    token = settings.notifier_token
    headers = {"Authorization": f"Bearer {token.get_secret_value()}"} if token else {}
    try:
        async with httpx.AsyncClient(timeout=2, headers=headers) as client:
            response = await client.get(f"{notifier_url}/api/v1/deliveries/summary", params={"limit": 500})
            response.raise_for_status()
            summary = response.json()
            counts = {str(status): int(n) for status, n in summary["counts"].items()}
            total = int(summary["total"])
    except (httpx.HTTPError, ValueError, KeyError, TypeError, AttributeError):
        return {"error": f"the notifier at {notifier_url} did not answer"}
    return {"counts": counts, "total": total}


@router.get("/", response_class=HTMLResponse)
async def status_page(
    caller: Caller, service: ServiceDep, sessions: SessionsDep, settings: SettingsDep, fragment: bool = False
) -> HTMLResponse:
    snapshot = await status_snapshot(service, sessions, reader=caller)
    details = [await procedure_detail(sessions, p["procedure_id"]) for p in snapshot["procedures"]]
    template = _templates.get_template("status.html")
    html = template.render(
        snapshot=snapshot,
        procedures=[d for d in details if d is not None],
        deliveries=await _deliveries(settings.procedure),
        fragment=fragment,
    )
    return HTMLResponse(html, headers={"Cache-Control": "no-store"})
