"""The live status page at ``/``: for the Servicedesk and ops, read-only, no external assets.

Rendered on the server (readable without JavaScript); a few lines of plain JavaScript re-render the live
part whenever the server-sent-event stream announces a change.
"""

from __future__ import annotations

from collections import Counter
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse
from jinja2 import Environment, FileSystemLoader, StrictUndefined, select_autoescape

from services.procedure.api.deps import Reader, ServiceDep, SessionsDep, SettingsDep
from services.procedure.queries import procedure_detail, status_snapshot

router = APIRouter(include_in_schema=False)
_templates = Environment(
    loader=FileSystemLoader(Path(__file__).with_name("templates")),
    autoescape=select_autoescape(default=True),
    undefined=StrictUndefined,
)


def _when(value: datetime | None) -> str:
    return value.strftime("%Y-%m-%d %H:%M:%S UTC") if value else "-"


_templates.filters["when"] = _when


async def _deliveries(notifier_url: str | None) -> dict[str, Any] | None:
    """Counts of the notifier's latest deliveries by status, or None when it cannot be asked."""
    if not notifier_url:
        return None
    try:
        async with httpx.AsyncClient(timeout=2) as client:
            response = await client.get(f"{notifier_url}/api/v1/deliveries", params={"limit": 500})
            response.raise_for_status()
            items = response.json()["items"]
    except (httpx.HTTPError, ValueError, KeyError):
        return {"error": f"the notifier at {notifier_url} did not answer"}
    return {"counts": dict(Counter(item["status"] for item in items)), "total": len(items)}


@router.get("/", response_class=HTMLResponse, dependencies=[Reader])
async def status_page(
    request: Request, service: ServiceDep, sessions: SessionsDep, settings: SettingsDep, fragment: bool = False
) -> HTMLResponse:
    snapshot = await status_snapshot(service, sessions)
    details = [await procedure_detail(sessions, p["procedure_id"]) for p in snapshot["procedures"]]
    template = _templates.get_template("status.html")
    html = template.render(
        snapshot=snapshot,
        procedures=[d for d in details if d is not None],
        deliveries=await _deliveries(settings.procedure.notifier_url),
        fragment=fragment,
    )
    return HTMLResponse(html, headers={"Cache-Control": "no-store"})
