"""The one error shape (shared/errors.py): what every kind of error answers, and how the OpenAPI says so."""

from __future__ import annotations

from typing import Annotated, Any

import httpx
import pytest
from fastapi import FastAPI, HTTPException, Query
from pydantic import BaseModel

from shared.errors import ApiError, Conflict, Invalid, InvalidCursor, NotFound, document_errors, install_error_handlers


class Body(BaseModel):
    name: str
    count: int


def _app() -> FastAPI:
    app = FastAPI()
    install_error_handlers(app)

    @app.post("/things/{thing_id}", responses={404: {"description": "No such thing"}})
    async def change(thing_id: str, body: Body, limit: Annotated[int, Query(ge=1)] = 1) -> dict[str, str]:
        refusals: dict[str, Exception] = {
            "gone": NotFound("no thing 'gone'"), "busy": Conflict("the thing is busy"),
            "odd": Invalid("count must be even"), "page": InvalidCursor("invalid cursor"),
            "locked": HTTPException(423, "locked", headers={"Retry-After": "3"}), "bug": RuntimeError("a bug"),
        }
        if thing_id in refusals:
            raise refusals[thing_id]
        return {"thing_id": thing_id}

    @app.get("/public")
    async def public() -> dict[str, str]:
        return {"status": "ok"}

    return app


@pytest.fixture
async def client() -> Any:
    transport = httpx.ASGITransport(app=_app(), raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        yield client


@pytest.mark.parametrize(("thing", "status", "detail"), [
    ("gone", 404, "no thing 'gone'"),
    ("busy", 409, "the thing is busy"),
    ("odd", 422, "count must be even"),
    ("page", 400, "invalid cursor"),
    ("locked", 423, "locked"),
    ("bug", 500, "internal error: it is logged; try again or report it"),
])
async def test_every_error_is_an_api_error(client: httpx.AsyncClient, thing: str, status: int, detail: str) -> None:
    response = await client.post(f"/things/{thing}", json={"name": "x", "count": 2})
    assert response.status_code == status
    assert response.json() == {"detail": detail}
    if thing == "locked":
        assert response.headers["Retry-After"] == "3"


async def test_a_validation_error_names_each_field_in_the_same_shape(client: httpx.AsyncClient) -> None:
    response = await client.post("/things/t", params={"limit": 0}, json={"name": "x"})
    assert response.status_code == 422
    body = ApiError.model_validate(response.json())
    assert body.errors is not None
    assert {tuple(e.loc) for e in body.errors} == {("query", "limit"), ("body", "count")}
    assert body.detail.startswith("invalid request: ")
    assert "query.limit" in body.detail and "body.count" in body.detail
    unknown = await client.get("/nowhere")
    assert (unknown.status_code, unknown.json()) == (404, {"detail": "Not Found"})


def test_the_openapi_declares_api_error_for_every_error_an_operation_can_answer() -> None:
    spec = _app().openapi()
    document_errors(spec, needs_token=lambda method, path: path != "/public")
    ref = {"$ref": "#/components/schemas/ApiError"}
    change = spec["paths"]["/things/{thing_id}"]["post"]["responses"]
    assert set(change) == {"200", "400", "401", "403", "404", "413", "422", "429", "503"}
    assert all(change[c]["content"] == {"application/json": {"schema": ref}} for c in change if c != "200")
    public = spec["paths"]["/public"]["get"]["responses"]
    assert set(public) == {"200", "503"}  # no token, no parameters, no body
    assert "HTTPValidationError" not in spec["components"]["schemas"]
    assert spec["components"]["schemas"]["ApiError"]["required"] == ["detail"]
