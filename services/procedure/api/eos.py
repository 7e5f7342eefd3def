"""The EO registry API: operators write; operators and the bureau read every EO, an EO its own record;
secrets and keys never come back."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Query, Response

from services.procedure.api.deps import RegistryDep
from services.procedure.registry import Conflict, eo_view
from services.procedure.schemas import EoCreate, EoPatch, Eori
from shared.auth import Caller, refuse

router = APIRouter(prefix="/api/v1/eos", tags=["eo registry"])


def _missing(eori: str) -> HTTPException:
    return HTTPException(404, f"no EO {eori!r} is registered")


@router.post("", status_code=201, summary="Register an EO; the response carries its API key, shown this once")
async def create_eo(body: EoCreate, _caller: Caller, registry: RegistryDep) -> dict[str, Any]:
    try:
        row, api_key = await registry.create(body)
    except Conflict as exc:
        raise HTTPException(409, str(exc)) from exc
    except ValueError as exc:
        raise HTTPException(422, str(exc)) from exc
    return eo_view(row) | {"api_key": api_key}


@router.get("", summary="Registered EOs, by EORI (an EO: its own record only)")
async def list_eos(
    caller: Caller,
    registry: RegistryDep,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    cursor: Annotated[Eori | None, Query(description="'next' of the previous page")] = None,
) -> dict[str, Any]:
    if not caller.reads_every_eo:
        own = await registry.get(caller.eori) if caller.eori and (cursor is None or cursor < caller.eori) else None
        return {"items": [eo_view(own)] if own else [], "next": None}
    rows = await registry.page(after=cursor, limit=limit + 1)
    return {"items": [eo_view(r) for r in rows[:limit]], "next": rows[limit - 1].eori if len(rows) > limit else None}


@router.get("/{eori}", summary="One EO (an EO: its own)")
async def get_eo(eori: str, caller: Caller, registry: RegistryDep) -> dict[str, Any]:
    if not caller.may_read_eo(eori.strip().upper()):
        raise refuse(caller, "read another EO's record")
    row = await registry.get(eori.strip().upper())
    if row is None:
        raise _missing(eori)
    return eo_view(row)


@router.patch("/{eori}", summary="Change an EO: only the fields given change; null clears an optional one")
async def update_eo(eori: str, body: EoPatch, _caller: Caller, registry: RegistryDep) -> dict[str, Any]:
    try:
        return eo_view(await registry.update(eori.strip().upper(), body))
    except LookupError as exc:
        raise _missing(eori) from exc
    except ValueError as exc:
        raise HTTPException(422, str(exc)) from exc


@router.delete("/{eori}", status_code=204, summary="Remove an EO from the registry")
async def delete_eo(eori: str, _caller: Caller, registry: RegistryDep) -> Response:
    try:
        await registry.delete(eori.strip().upper())
    except LookupError as exc:
        raise _missing(eori) from exc
    return Response(status_code=204)


@router.post("/{eori}/api-key", summary="Issue a new API key for an EO (the old one stops working)")
async def rotate_api_key(eori: str, _caller: Caller, registry: RegistryDep) -> dict[str, str]:
    try:
        return {"eori": eori.strip().upper(), "api_key": await registry.rotate_key(eori.strip().upper())}
    except LookupError as exc:
        raise _missing(eori) from exc
