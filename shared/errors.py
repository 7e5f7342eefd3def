"""The one shape of every error answer of every service's HTTP API, and the errors that map to it.

Every 4xx and 5xx body is :class:`ApiError`: ``{"detail": "<what is wrong, in one sentence>"}``, plus
``errors`` (one entry per invalid field) on a 422 from request validation. FastAPI's own validation errors,
``HTTPException``, the edge's 413, the guard's 401/403/429, a dependency that is down (503) and anything
unexpected (500) all answer in it; :func:`document_errors` declares it for every operation in the OpenAPI.

Service code raises :class:`ClientError` subclasses (:class:`NotFound`, :class:`Conflict`,
:class:`Invalid`, :class:`InvalidCursor`) by what went wrong; the status code is decided here, once.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

__all__ = [
    "ERROR_SCHEMA",
    "ApiError",
    "ClientError",
    "Conflict",
    "FieldError",
    "Invalid",
    "InvalidCursor",
    "NotFound",
    "Responses",
    "document_errors",
    "error_response",
    "install_error_handlers",
]

log = logging.getLogger(__name__)


class FieldError(BaseModel):
    """One invalid part of a request."""

    loc: list[str | int] = Field(description="Where: body, query, path or header, then the field's path")
    msg: str = Field(description="What is wrong with it")
    type: str = Field(description="Pydantic's error type, e.g. missing, string_too_long")


class ApiError(BaseModel):
    """Every error answer (4xx, 5xx) of every service."""

    detail: str = Field(description="What went wrong, and where it helps, what to do instead")
    errors: list[FieldError] | None = Field(None, description="On a 422 from request validation: each invalid field")


ERROR_SCHEMA = "ApiError"

Responses = dict[int | str, dict[str, Any]]
"""The ``responses=`` of a route: its errors are documented as :class:`ApiError` by :func:`document_errors`."""


class ClientError(Exception):
    """A request the service refuses; ``status`` is its HTTP status, the message its ``detail``."""

    status = 400


class NotFound(ClientError, LookupError):
    status = 404


class Conflict(ClientError):
    """The request does not fit the current state (e.g. closing a closed procedure)."""

    status = 409


class Invalid(ClientError, ValueError):
    """The request is well-formed but its values do not make sense together."""

    status = 422


class InvalidCursor(ClientError, ValueError):
    """A page cursor that is not the ``next`` of a previous page of the same query."""

    status = 400


def error_response(status: int, detail: str, *, headers: Mapping[str, str] | None = None,
                   errors: list[FieldError] | None = None) -> JSONResponse:
    body = ApiError(detail=detail, errors=errors).model_dump(mode="json", exclude_none=True)
    return JSONResponse(body, status_code=status, headers=dict(headers) if headers else None)


def _where(loc: tuple[str | int, ...] | list[str | int]) -> str:
    return ".".join(str(part) for part in loc)


def _validation_detail(errors: list[FieldError]) -> str:
    said = "; ".join(f"{_where(e.loc)}: {e.msg}" for e in errors[:5])
    more = f" (and {len(errors) - 5} more)" if len(errors) > 5 else ""
    return f"invalid request: {said}{more}"


def install_error_handlers(app: FastAPI) -> None:
    """Make every error ``app`` answers an :class:`ApiError`."""

    @app.exception_handler(RequestValidationError)
    async def invalid_request(_request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = [FieldError(loc=[p if isinstance(p, int) else str(p) for p in e.get("loc", ())],
                             msg=str(e.get("msg", "")), type=str(e.get("type", "")))
                  for e in exc.errors()]
        return error_response(422, _validation_detail(errors), errors=errors)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return error_response(exc.status_code, str(exc.detail), headers=exc.headers)

    @app.exception_handler(ClientError)
    async def refused(_request: Request, exc: ClientError) -> JSONResponse:
        return error_response(exc.status, str(exc))

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.error("unexpected error on %s %s", request.method, request.url.path, exc_info=exc)
        return error_response(500, "internal error: it is logged; try again or report it")


_DESCRIPTIONS = {
    400: "Bad request: a body that cannot be parsed, or a cursor that is not the `next` of a previous page",
    401: "No credentials: send `Authorization: Bearer <token>`",
    403: "Unknown token, or a role that may not do this",
    404: "Not found",
    409: "Does not fit the current state",
    413: "Request body too large",
    415: "Unsupported content type",
    422: "Invalid request: `errors` names each invalid field",
    429: "Too many failed authentications from this address: wait `Retry-After` seconds",
    503: "A dependency (the database) is unavailable, or the service is starting: retry after `Retry-After`",
}
_WITH_BODY = {"post", "put", "patch", "delete"}


def document_errors(spec: dict[str, Any], *, needs_token: Callable[[str, str], bool]) -> None:
    """Declare :class:`ApiError` in ``spec`` for every error an operation can answer: whatever it declared
    (its 4xx/5xx without a schema of their own get this one, FastAPI's 422 is replaced), 401/403/429 where
    ``needs_token(method, path)``, 400 and 413 where it takes a body, 422 where it takes parameters or a
    body, 503 everywhere."""
    schemas = spec.setdefault("components", {}).setdefault("schemas", {})
    schemas[ERROR_SCHEMA] = ApiError.model_json_schema(ref_template="#/components/schemas/{model}")
    for name, definition in schemas[ERROR_SCHEMA].pop("$defs", {}).items():
        schemas[name] = definition
    for name in ("HTTPValidationError", "ValidationError"):
        schemas.pop(name, None)
    ref = {"$ref": f"#/components/schemas/{ERROR_SCHEMA}"}
    for path, operations in spec.get("paths", {}).items():
        for method, operation in operations.items():
            responses: dict[str, Any] = operation.setdefault("responses", {})
            codes = {503}
            if needs_token(method, path):
                codes |= {401, 403, 429}
            if method in _WITH_BODY:
                codes |= {413}
            if operation.get("parameters") or "requestBody" in operation:
                codes |= {422}
            if "requestBody" in operation:
                codes |= {400}  # a body that is not even JSON (FastAPI: "There was an error parsing the body")
            for number in codes:
                responses.setdefault(str(number), {"description": _DESCRIPTIONS[number]})
            for code, response in responses.items():
                if code[:1] not in ("4", "5"):
                    continue
                if code == "422":
                    response["description"] = _DESCRIPTIONS[422]
                    response["content"] = {"application/json": {"schema": ref}}
                content = response.setdefault("content", {})
                json_body = content.setdefault("application/json", {})
                json_body.setdefault("schema", ref)
                if json_body["schema"] in ({}, None):
                    json_body["schema"] = ref
                for media in [m for m in content if m != "application/json"]:
                    del content[media]  # an error is JSON whatever the route's own media type
