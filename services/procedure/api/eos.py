"""The EO registry API: operators write; operators and the bureau read every EO, an EO its own record;
secrets and keys never come back."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Response

from services.procedure.api.deps import RegistryDep
from services.procedure.models import EoRow
from services.procedure.registry import Conflict, eo_view
from services.procedure.schemas import EoCreate, EoPatch
from services.procedure.views import ApiKeyIssued, EoCreated, EoPage, EoView
from shared.auth import Caller, refuse
from shared.errors import Conflict as Clash
from shared.errors import Invalid, NotFound, Responses
from shared.paging import CURSOR_MAX_LENGTH, decode_cursor, next_cursor

router = APIRouter(prefix="/api/v1/eos", tags=["eo registry"])

_NOT_FOUND: Responses = {404: {"description": "No such EO"}}


def _missing(eori: str) -> NotFound:
    return NotFound(f"no EO {eori!r} is registered")


def _view(row: EoRow) -> EoView:
    return EoView.model_validate(eo_view(row))


@router.post("", status_code=201, response_model=EoCreated, responses={409: {"description": "Already registered"}},
             summary="Register an EO; the response carries its API key, shown this once")
async def create_eo(body: EoCreate, _caller: Caller, registry: RegistryDep) -> EoCreated:
    try:
        row, api_key = await registry.create(body)
    except Conflict as exc:
        raise Clash(str(exc)) from exc
    except ValueError as exc:
        raise Invalid(str(exc)) from exc
    return EoCreated(**_view(row).model_dump(), api_key=api_key)


@router.get("", response_model=EoPage,
            responses={400: {"description": "A cursor that is not the `next` of a previous page"}},
            summary="Registered EOs, by EORI (an EO: its own record only)")
async def list_eos(
    caller: Caller,
    registry: RegistryDep,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    cursor: Annotated[str | None, Query(max_length=CURSOR_MAX_LENGTH, description="'next' of the previous page")]
    = None,
) -> EoPage:
    after = decode_cursor(cursor, keys=1)[0] if cursor is not None else None
    if not caller.reads_every_eo:
        own = await registry.get(caller.eori) if caller.eori and (after is None or after < caller.eori) else None
        return EoPage(items=[_view(own)] if own else [], next=None)
    rows = await registry.page(after=after, limit=limit + 1)
    return EoPage(items=[_view(r) for r in rows[:limit]], next=next_cursor(rows, limit=limit, key=lambda r: (r.eori,)))


@router.get("/{eori}", response_model=EoView, responses=_NOT_FOUND, summary="One EO (an EO: its own)")
async def get_eo(eori: str, caller: Caller, registry: RegistryDep) -> EoView:
    if not caller.may_read_eo(eori.strip().upper()):
        raise refuse(caller, "read another EO's record")
    row = await registry.get(eori.strip().upper())
    if row is None:
        raise _missing(eori)
    return _view(row)


@router.patch("/{eori}", response_model=EoView, responses=_NOT_FOUND,
              summary="Change an EO: only the fields given change; null clears an optional one")
async def update_eo(eori: str, body: EoPatch, _caller: Caller, registry: RegistryDep) -> EoView:
    try:
        return _view(await registry.update(eori.strip().upper(), body))
    except LookupError as exc:
        raise _missing(eori) from exc
    except ValueError as exc:
        raise Invalid(str(exc)) from exc


@router.delete("/{eori}", status_code=204, response_class=Response,
               responses=_NOT_FOUND | {204: {"description": "Removed"}}, summary="Remove an EO from the registry")
async def delete_eo(eori: str, _caller: Caller, registry: RegistryDep) -> Response:
    try:
        await registry.delete(eori.strip().upper())
    except LookupError as exc:
        raise _missing(eori) from exc
    return Response(status_code=204)


@router.post("/{eori}/api-key", response_model=ApiKeyIssued, responses=_NOT_FOUND,
             summary="Issue a new API key for an EO (the old one stops working)")
async def rotate_api_key(eori: str, _caller: Caller, registry: RegistryDep) -> ApiKeyIssued:
    try:
        return ApiKeyIssued(eori=eori.strip().upper(), api_key=await registry.rotate_key(eori.strip().upper()))
    except LookupError as exc:
        raise _missing(eori) from exc
