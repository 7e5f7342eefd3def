"""The detector's HTTP API: every target with its state, one page at a time, and one target by id."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, HTTPException, Query, Request
from pydantic import BaseModel, Field

from services.detector.domain import TargetStatus, suspicion
from services.detector.queries import TargetFilter, targets_page
from services.detector.service import Detector
from services.detector.targets import ProbeKind, Target
from shared.auth import Caller, refuse
from shared.errors import NotFound
from shared.events import Component, ComponentState
from shared.paging import CURSOR_MAX_LENGTH, Page, decode_cursor, encode_cursor

router = APIRouter(prefix="/api/v1", tags=["targets"])


def _detector(request: Request) -> Detector:
    detector: Detector | None = getattr(request.app.state, "detector", None)
    if detector is None:
        raise HTTPException(503, "the detector is starting", headers={"Retry-After": "1"})
    return detector


DetectorDep = Annotated[Detector, Depends(_detector)]


class LastResult(BaseModel):
    ok: bool
    reason: str = Field(..., description="Reason code: ok, ebms_error, refused, reset, dns, timeout, http_503, ...")
    detail: str | None
    latency_ms: float | None
    at: datetime = Field(..., description="When the probe finished.")
    ebms_error: str | None = Field(None, description="ebMS error code of an AS4 answer that still counts as up.")


class TargetView(BaseModel):
    id: str
    component: Component
    probe: str
    url: str
    eori: str | None = Field(None, description="Set on EO AS4 endpoints (id eo:<EORI>).")
    source: Literal["config", "registry"]
    state: ComponentState
    since: datetime | None = Field(
        None, description="When the target entered its state (kept across restarts); null while unknown."
    )
    unconfirmed: bool = Field(
        False,
        description="The state was saved before a restart too long ago to count as current: it is not published "
        "until fresh probes confirm or change it.",
    )
    degraded: bool = Field(..., description="Up, but slower than the latency bound.")
    reason: str | None = Field(None, description="Reason code of the last probe.")
    latency_ms: float | None = Field(None, description="Latency of the last probe.")
    cert_expires_at: datetime | None = Field(None, description="Expiry of the certificate the target presented.")
    cert_warning_days: int | None = Field(
        None, description="Warning level reached: 30, 14 or 7 days before expiry, 0 once expired."
    )
    as4_signing: bool = Field(False, description="The as4 probe signs its ping and verifies the signed receipt.")
    as4_signing_cert_expires_at: datetime | None = Field(
        None, description="Expiry of our AS4 signing certificate (signed pings)."
    )
    as4_partner_cert_expires_at: datetime | None = Field(
        None, description="Expiry of the certificate that signed (or should sign) the last receipt (signed pings)."
    )
    as4_cert_warning_days: int | None = Field(
        None, description="Warning level of the sooner-expiring AS4 certificate: 30, 14 or 7 days, 0 once expired."
    )
    consecutive_failures: int
    consecutive_successes: int
    suspect: bool = Field(
        False, description="The last probe disagrees with the state: a change may be on its way (see verdict_by)."
    )
    verdict_by: datetime | None = Field(
        None, description="While suspect: when the running streak decides the change at the latest."
    )
    interval_s: float
    retry_interval_s: float = Field(..., description="Probe pace while a change is being confirmed.")
    timeout_s: float
    last_result: LastResult | None


class TargetPage(Page[TargetView]):
    pass


def _view(detector: Detector, target: Target, status: TargetStatus) -> TargetView:
    last = status.last
    suspected = suspicion(status, target.thresholds, retry_interval_s=target.retry_interval_s,
                          timeout_s=target.timeout_s)
    return TargetView(
        id=target.id,
        component=target.component,
        probe=target.probe,
        url=target.url,
        eori=target.eori,
        source=target.source,
        state=status.state,
        since=status.since,
        unconfirmed=status.unconfirmed,
        degraded=status.degraded,
        reason=last.reason if last else None,
        latency_ms=last.latency_ms if last else None,
        cert_expires_at=last.cert_expires_at if last else None,
        cert_warning_days=detector.cert_warning_of(target.id),
        as4_signing=target.as4_signing is not None,
        as4_signing_cert_expires_at=last.signing_cert_expires_at if last else None,
        as4_partner_cert_expires_at=last.partner_cert_expires_at if last else None,
        as4_cert_warning_days=detector.as4_cert_warning_of(target.id),
        consecutive_failures=status.consecutive_failures,
        consecutive_successes=status.consecutive_successes,
        suspect=suspected.suspect,
        verdict_by=suspected.verdict_by,
        interval_s=target.interval_s,
        retry_interval_s=target.retry_interval_s,
        timeout_s=target.timeout_s,
        last_result=None if last is None else LastResult(
            ok=last.ok, reason=last.reason, detail=last.detail, latency_ms=last.latency_ms,
            at=last.finished_at, ebms_error=last.ebms_error,
        ),
    )


@router.get("/targets", summary="Every probed target with its state, sorted by id", response_model=TargetPage,
            responses={400: {"description": "A cursor that is not the `next` of a previous page"}})
async def list_targets(
    caller: Caller,
    detector: DetectorDep,
    limit: Annotated[int, Query(ge=1, le=1000, description="Page size.")] = 100,
    cursor: Annotated[str | None, Query(max_length=CURSOR_MAX_LENGTH, description="The `next` of the previous page.")]
    = None,
    state: Annotated[ComponentState | None, Query(description="Only targets in this state.")] = None,
    component: Annotated[Component | None, Query(description="Only targets of this component.")] = None,
    probe: Annotated[ProbeKind | None, Query(description="Only this probe kind.")] = None,
) -> TargetPage:
    after = decode_cursor(cursor, keys=1)[0] if cursor is not None else None
    page, more = targets_page(detector.view(), after=after, limit=limit,
                              only=TargetFilter(state=state, component=component, probe=probe),
                              may_read=caller.may_read_eo)
    return TargetPage(
        items=[_view(detector, t, s) for t, s in page],
        next=encode_cursor(page[-1][0].id) if more and page else None,
    )


@router.get(
    "/targets/{target_id}",
    summary="One target",
    response_model=TargetView,
    responses={404: {"description": "No such target"}},
)
async def get_target(target_id: str, caller: Caller, detector: DetectorDep) -> TargetView:
    target = detector.targets.get(target_id)
    status = detector.statuses.get(target_id)
    if target is None or status is None:
        raise NotFound(f"no target {target_id!r}: GET /api/v1/targets lists them; EO endpoints are 'eo:<EORI>'")
    if not caller.may_read_eo(target.eori):
        raise refuse(caller, "read an EO's AS4 endpoint")
    return _view(detector, target, status)
