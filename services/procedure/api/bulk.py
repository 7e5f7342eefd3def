"""Bulk registry API: ``POST /api/v1/eos:import`` (operator) and ``GET /api/v1/eos:export`` (operator, bureau).

Import: the body is NDJSON (``Content-Type: application/x-ndjson``) or CSV (``text/csv``), read as it
arrives (see :mod:`services.procedure.bulk`). The new EOs' API keys are shown once, chosen by ``keys``:

- ``keys=file`` (default): the answer is ``multipart/mixed`` with two parts: first the counts
  (``application/json``, the :class:`EoImportResult` shape), then the keys file as an attachment
  (``eo-api-keys.ndjson`` with ``{"eori", "api_key"}`` lines for an NDJSON import, ``eo-api-keys.csv`` with
  ``eori,api_key`` for a CSV one). ``luccs-fallback eos import --keys-out FILE`` saves it.
- ``keys=none``: no key is handed out (the new EOs get keys nobody knows; ``POST /api/v1/eos/{eori}/api-key``
  issues one later); the answer is the counts as plain JSON.

Export: every EO by EORI, NDJSON, or CSV with ``Accept: text/csv``, streamed page by page; never a secret.
"""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator
from functools import partial
from typing import Annotated, Any, Literal

from fastapi import APIRouter, HTTPException, Query, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import BaseModel, Field
from starlette.requests import ClientDisconnect

from services.procedure.api.deps import RegistryDep, SettingsDep
from services.procedure.bulk import (
    EXPORT_COLUMNS,
    ImportFormat,
    ImportReport,
    ImportTooLarge,
    InvalidImport,
    csv_line,
    export_line,
    import_eos,
)
from services.procedure.registry import eo_view
from shared.auth import Caller
from shared.errors import ApiError

router = APIRouter(prefix="/api/v1", tags=["eo registry"])

IMPORT_PATH = "/api/v1/eos:import"
EXPORT_PAGE = 1000
_MEDIA = {ImportFormat.NDJSON: "application/x-ndjson", ImportFormat.CSV: "text/csv"}


class RejectedLine(BaseModel):
    line: int = Field(description="Line number in the file (1 = first line; a CSV's header is line 1)")
    reason: str = Field(description="Why the line was not imported")


class EoImportResult(BaseModel):
    created: int = Field(description="EOs registered by this import")
    updated: int = Field(description="EOs that existed and were changed")
    unchanged: int = Field(description="EOs that existed and already matched their line")
    rejected: list[RejectedLine] = Field(description="Lines not imported, by line number")


class ImportTooLargeError(ApiError):
    """413 in the middle of an import: the lines before the limit were imported."""

    imported: EoImportResult = Field(description="What the lines before the limit did")


class EoExportLine(BaseModel):
    """One line of the export (NDJSON) or row (CSV): the EO without its secret or key."""

    eori: str
    name: str
    language: str
    email: str | None
    webhook_url: str | None
    as4_endpoint: str | None
    has_webhook_secret: bool
    created_at: str
    updated_at: str


def _format(content_type: str | None) -> ImportFormat:
    media = (content_type or "").split(";")[0].strip().lower()
    if media in ("application/x-ndjson", "application/jsonl", "application/json-seq", "application/ndjson"):
        return ImportFormat.NDJSON
    if media == "text/csv":
        return ImportFormat.CSV
    raise HTTPException(415, "send the EOs as NDJSON (Content-Type: application/x-ndjson) or CSV (text/csv)")


def _result(report: ImportReport) -> EoImportResult:
    return EoImportResult(created=report.created, updated=report.updated, unchanged=report.unchanged,
                          rejected=[RejectedLine(line=r.line, reason=r.reason) for r in report.rejected])


def _multipart(result: EoImportResult, keys: bytes, fmt: ImportFormat) -> Response:
    boundary = f"luccs-{secrets.token_hex(16)}"
    name = f"eo-api-keys.{fmt.value}"
    head = b"eori,api_key\r\n" if fmt == ImportFormat.CSV else b""
    body = b"".join([
        f"--{boundary}\r\nContent-Type: application/json\r\n\r\n".encode(), result.model_dump_json().encode(),
        f"\r\n--{boundary}\r\nContent-Type: {_MEDIA[fmt]}\r\n"
        f"Content-Disposition: attachment; filename=\"{name}\"\r\n\r\n".encode(), head, keys,
        f"\r\n--{boundary}--\r\n".encode(),
    ])
    return Response(body, media_type=f"multipart/mixed; boundary={boundary}", headers={"Cache-Control": "no-store"})


@router.post(
    "/eos:import", response_model=EoImportResult,
    summary="Create or update EOs from an NDJSON or CSV file, by EORI; new EOs' API keys once, as a file",
    openapi_extra={"requestBody": {"required": True, "content": {
        "application/x-ndjson": {"schema": {"type": "string"}}, "text/csv": {"schema": {"type": "string"}}}}},
    responses={200: {"description": "keys=none: the counts (JSON). keys=file: multipart/mixed, the counts "
                                    "(JSON) then the keys file (attachment).",
                     "content": {"multipart/mixed": {"schema": {"type": "string"}}}},
               400: {"description": "The file cannot be read at all (e.g. an unknown CSV column)"},
               413: {"model": ImportTooLargeError,
                     "description": "Body over procedure.import_max_bytes (`imported`: what the lines before did)"},
               415: {"description": "Neither NDJSON nor CSV"}},
)
async def import_eos_file(
    request: Request,
    _caller: Caller,
    registry: RegistryDep,
    settings: SettingsDep,
    keys: Annotated[Literal["file", "none"], Query(
        description="file: the new EOs' API keys come back once, as a second part; none: no key is handed out")]
    = "file",
) -> Any:
    fmt = _format(request.headers.get("content-type"))
    limit = settings.procedure.import_max_bytes
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise HTTPException(413, f"import body larger than {limit} bytes: split the file")
    try:
        report = await import_eos(
            body=request.stream(), fmt=fmt, chunk_lines=settings.procedure.import_chunk_lines, max_bytes=limit,
            upsert_chunk=partial(registry.upsert_chunk, issue_keys=keys == "file"),
        )
    except InvalidImport as exc:
        raise HTTPException(400, str(exc)) from exc
    except ImportTooLarge as exc:
        done = _result(exc.report)
        return JSONResponse(status_code=413, content=ImportTooLargeError(
            detail=f"{exc}: the lines before were imported ({done.created} created, {done.updated} updated); "
                   "split the file", imported=done).model_dump(mode="json", exclude_none=True))
    except ClientDisconnect as exc:
        raise HTTPException(400, "the client went away before the end of the file") from exc
    result = _result(report)
    return result if keys == "none" else _multipart(result, bytes(report.keys), fmt)


@router.get(
    "/eos:export", response_class=StreamingResponse,
    summary="Every EO, by EORI, as NDJSON (default) or CSV (Accept: text/csv); no secret, no key",
    responses={200: {"description": "One EoExportLine per line (NDJSON), or a CSV with a header row",
                     "content": {"application/x-ndjson": {"schema": {"type": "string"}},
                                 "text/csv": {"schema": {"type": "string"}}}}},
)
async def export_eos(request: Request, _caller: Caller, registry: RegistryDep) -> StreamingResponse:
    fmt = ImportFormat.CSV if "text/csv" in request.headers.get("accept", "") else ImportFormat.NDJSON

    async def lines() -> AsyncIterator[bytes]:
        if fmt == ImportFormat.CSV:
            yield csv_line(EXPORT_COLUMNS)
        async for rows in registry.each(batch=EXPORT_PAGE):
            yield b"".join(export_line(eo_view(row), fmt) for row in rows)

    media = _MEDIA[fmt] + ("; charset=utf-8" if fmt == ImportFormat.CSV else "")
    return StreamingResponse(lines(), media_type=media,
                             headers={"Content-Disposition": f'attachment; filename="eos.{fmt.value}"'})
