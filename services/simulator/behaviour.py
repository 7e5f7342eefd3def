"""What a simulated endpoint answers, by its kind and its current mode. Pure: no sockets, no clock reads.

``refuse`` and ``hang`` are not answers: the server enforces them (closed listening socket; a request
read and never answered), so :func:`reply` is only asked about the modes that answer.
"""

from __future__ import annotations

import html
import json
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum

from services.simulator import ebms


class Mode(StrEnum):
    """How a simulated endpoint behaves; switched at run time through the control API."""

    OK = "ok"
    REFUSE = "refuse"
    HANG = "hang"
    UNAVAILABLE = "503"
    MAINTENANCE = "maintenance"
    EBMS_ERROR = "ebms-error"


MODE_HELP: dict[Mode, str] = {
    Mode.OK: "normal service: AS4 receipt, portal page, or webhook accepted",
    Mode.REFUSE: "the listening socket is closed: connections are refused",
    Mode.HANG: "connections are accepted and requests read, but never answered",
    Mode.UNAVAILABLE: "HTTP 503 Service Unavailable",
    Mode.MAINTENANCE: "HTTP 200 with an HTML maintenance page instead of the normal answer",
    Mode.EBMS_ERROR: "HTTP 500 SOAP eb:Error EBMS:0103 (an AS4 MSH that is up but refuses the message)",
}


class Kind(StrEnum):
    """What an endpoint stands in for."""

    AS4 = "as4"  # an AS4 MSH: the ADA's B2G entry point or an EO's
    PORTAL = "portal"  # the National Trader Portal (NTP)
    RECEIVER = "receiver"  # EO webhook receiver


@dataclass(frozen=True)
class Request:
    """One HTTP request as the simulated endpoint read it."""

    method: str
    path: str
    headers: dict[str, str]  # names lower-cased
    body: bytes


@dataclass(frozen=True)
class Reply:
    """One HTTP answer."""

    status: int
    content_type: str
    body: bytes

    @classmethod
    def text(cls, status: int, text: str) -> Reply:
        return cls(status, "text/plain; charset=utf-8", text.encode())

    @classmethod
    def json(cls, status: int, value: object) -> Reply:
        return cls(status, "application/json", json.dumps(value, ensure_ascii=False, default=str).encode())

    @classmethod
    def html(cls, status: int, page: str) -> Reply:
        return cls(status, "text/html; charset=utf-8", page.encode())


def _page(title: str, paragraphs: list[str]) -> str:
    body = "".join(f"<p>{html.escape(p)}</p>" for p in paragraphs)
    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        f"<title>{html.escape(title)}</title></head><body><h1>{html.escape(title)}</h1>{body}</body></html>\n"
    )


PORTAL_PAGE = _page(
    "National Trader Portal (simulated)",
    ["LUCCS National Import System: lodge your import declarations here.",
     "This page is served by the luccs-fallback simulator."],
)
MAINTENANCE_PAGE = _page(
    "Maintenance in progress",
    ["The service is temporarily unavailable for maintenance. Please try again later.",
     "Simulator mode 'maintenance'."],
)


def reply(*, kind: Kind, mode: Mode, request: Request, now: datetime) -> Reply:
    """The answer of an endpoint of ``kind`` in ``mode`` (one of the answering modes) to ``request``."""
    if mode is Mode.UNAVAILABLE:
        return Reply.text(503, "Service Unavailable (simulator mode '503')\n")
    if mode is Mode.MAINTENANCE:
        return Reply.html(200, MAINTENANCE_PAGE)
    if mode is Mode.EBMS_ERROR:
        ref_to = ebms.request_message_id(request.body) if request.method == "POST" else None
        return Reply(500, ebms.SOAP_CONTENT_TYPE, ebms.error(ebms.POLICY_NONCOMPLIANCE, now=now, ref_to=ref_to))
    if mode is not Mode.OK:
        raise ValueError(f"mode {mode.value!r} does not answer; the server enforces it")
    if kind is Kind.AS4:
        return _as4(request, now=now)
    if kind is Kind.PORTAL:
        return Reply.html(200, PORTAL_PAGE)
    return Reply.json(200, {"status": "received"})


def _as4(request: Request, *, now: datetime) -> Reply:
    if request.method in ("GET", "HEAD"):
        # Lets a plain http probe (GET, 2xx) watch an AS4 endpoint too.
        return Reply.text(200, "AS4 MSH (simulated) is up: POST a SOAP 1.2 ebMS3 UserMessage here.\n")
    if request.method != "POST":
        return Reply.text(405, "POST a SOAP 1.2 ebMS3 UserMessage\n")
    try:
        message = ebms.parse_user_message(request.body)
    except ebms.InvalidUserMessage as exc:
        problem = ebms.EbmsError(
            code=ebms.INVALID_HEADER.code, short_description=ebms.INVALID_HEADER.short_description,
            description=f"{ebms.INVALID_HEADER.description} {exc}",
        )
        return Reply(500, ebms.SOAP_CONTENT_TYPE, ebms.error(problem, now=now, ref_to=None))
    return Reply(200, ebms.SOAP_CONTENT_TYPE, ebms.receipt(message, now=now))
