"""Notifier API: the delivery log, every delivery with its attempts and outcome, newest first (an EO: its
own only); a summary of the latest deliveries by status, which names no EO; and the reach of a procedure
(who of the EOs it concerns has been reached, on which channel, how fast)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Path, Query, Request
from pydantic import BaseModel, Field
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from services.notifier import queries
from services.notifier.queries import DeliveryPage, DeliverySummary
from services.notifier.reach import procedure_reach
from shared.auth import Caller, refuse
from shared.errors import NotFound
from shared.events import DeliveryChannel, DeliveryStatus
from shared.paging import CURSOR_MAX_LENGTH
from shared.roles import Role

router = APIRouter(prefix="/api/v1", tags=["deliveries"])

_PRINTABLE = r"^[^\x00-\x1f\x7f]*$"
Text = Annotated[str | None, Query(max_length=200, pattern=_PRINTABLE)]


@router.get("/deliveries/summary", response_model=DeliverySummary,
            summary="How many of the latest deliveries are in each status (no EO data)")
async def delivery_summary(
    request: Request, limit: Annotated[int, Query(ge=1, le=10_000, description="How many of the latest.")] = 500,
) -> DeliverySummary:
    sessions: async_sessionmaker[AsyncSession] = request.app.state.sessions
    return await queries.delivery_summary(sessions, limit=limit)


@router.get("/deliveries", response_model=DeliveryPage,
            responses={400: {"description": "A cursor that is not the `next` of a previous page"}},
            summary="Deliveries with their attempts, newest first (an EO: its own only)")
async def list_deliveries(
    request: Request,
    caller: Caller,
    procedure_id: Annotated[Text, Query(description="The procedure announced (or the advisory id).")] = None,
    eori: Annotated[Text, Query(description="Only the deliveries to this EO.")] = None,
    status: Annotated[DeliveryStatus | None, Query(description="pending, retrying, delivered or dead.")] = None,
    channel: Annotated[DeliveryChannel | None, Query(description="webhook or email.")] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    cursor: Annotated[str | None, Query(max_length=CURSOR_MAX_LENGTH, description="'next' of the previous page")]
    = None,
) -> DeliveryPage:
    if eori is not None and not caller.may_read_eo(eori):
        raise refuse(caller, "read another EO's deliveries")
    if caller.role != Role.EO and not caller.reads_every_eo:
        raise refuse(caller, "read deliveries")  # unreachable through the roles table; fails closed if it changes
    sessions: async_sessionmaker[AsyncSession] = request.app.state.sessions
    return await queries.delivery_page(sessions, only_eori=caller.eori if caller.role == Role.EO else None,
                                       procedure_id=procedure_id, eori=eori, status=status, channel=channel,
                                       limit=limit, cursor=cursor)


class UnreachedEo(BaseModel):
    """A concerned EO that no notice of the procedure has reached yet."""

    eori: str = Field(..., description="EORI of the EO.")
    channel: DeliveryChannel | None = Field(
        ..., description="Channel of its latest failed try (or the one being tried); null: no webhook or e-mail."
    )
    last_error: str | None = Field(..., description="Why its latest try failed; null: none failed yet.")


class ProcedureReach(BaseModel):
    """Who of the EOs a procedure concerns has been reached, and its time to inform."""

    procedure_id: str
    opened_at: datetime | None = Field(..., description="When the procedure opened; null: never opened.")
    concerned: int = Field(..., description="EOs the procedure concerns (those registered late included).")
    reached: int = Field(..., description="Concerned EOs a notice of the procedure has reached, on any channel.")
    unreached: list[UnreachedEo] = Field(..., description="The other concerned EOs, by EORI.")
    reached_50_s: float | None = Field(
        ..., description="Seconds from the opening until half the concerned EOs were reached; null: not yet."
    )
    reached_99_s: float | None = Field(..., description="The same for 99 % of the concerned EOs; null: not yet.")
    reached_all_s: float | None = Field(..., description="The same for every concerned EO; null: not yet.")
    first_reached_s: float | None = Field(
        ..., description="Seconds from the opening until the first concerned EO was reached; null: not yet."
    )


@router.get(
    "/procedures/{procedure_id}/reach", response_model=ProcedureReach, tags=["reach"],
    summary="Who of the EOs a procedure concerns has been reached, on which channel, and how fast",
    responses={404: {"description": "The notifier has never heard of this procedure."}},
)
async def get_reach(
    request: Request, procedure_id: Annotated[str, Path(max_length=100, pattern=_PRINTABLE)]
) -> ProcedureReach:
    sessions: async_sessionmaker[AsyncSession] = request.app.state.sessions
    async with sessions() as session:
        report = await procedure_reach(session, procedure_id=procedure_id)
    if report is None:
        raise NotFound(f"no procedure {procedure_id!r} is known to the notifier")
    return ProcedureReach(
        procedure_id=report.procedure_id, opened_at=report.opened_at, concerned=report.concerned,
        reached=report.reached,
        unreached=[UnreachedEo(eori=eo.eori, channel=eo.channel, last_error=eo.last_error) for eo in report.unreached],
        reached_50_s=report.times.reached_50_s, reached_99_s=report.times.reached_99_s,
        reached_all_s=report.times.reached_all_s, first_reached_s=report.times.first_reached_s,
    )
