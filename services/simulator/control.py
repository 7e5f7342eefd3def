"""The simulator's control API: see every endpoint, switch its mode, read what the receiver got."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import FastAPI, HTTPException, Query, Response

from services.simulator.app import ALL, Simulator, UnknownEndpoint
from services.simulator.behaviour import MODE_HELP, Mode
from services.simulator.server import EndpointError


def create_control_app(simulator: Simulator) -> FastAPI:
    """The control server's FastAPI app, bound to ``simulator``."""
    app = FastAPI(
        title="luccs-fallback simulator",
        description="A local stand-in for LUCCS (ADA AS4 MSH, NTP), EO AS4 endpoints and an EO webhook receiver. "
        "Switch an endpoint's mode to cause an outage.",
    )

    @app.get("/healthz", tags=["ops"], summary="The simulator is alive")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/control", tags=["control"], summary="Every simulated endpoint: its URL, mode and whether it listens")
    async def endpoints() -> dict[str, Any]:
        return simulator.view() | {"modes": {mode.value: text for mode, text in MODE_HELP.items()}}

    @app.get("/control/{endpoint}", tags=["control"], summary="One simulated endpoint")
    async def endpoint(endpoint: str) -> dict[str, object]:
        try:
            return simulator.endpoint(endpoint).view()
        except UnknownEndpoint as exc:
            raise HTTPException(404, str(exc)) from exc

    @app.post(
        "/control/{endpoint}/{mode}", tags=["control"],
        summary=f"Switch an endpoint (or '{ALL}') to a mode: " + ", ".join(m.value for m in Mode),
    )
    async def switch(endpoint: str, mode: Mode) -> dict[str, Any]:
        try:
            changed = await simulator.set_mode(endpoint, mode)
        except UnknownEndpoint as exc:
            raise HTTPException(404, str(exc)) from exc
        except EndpointError as exc:
            raise HTTPException(409, str(exc)) from exc
        return {"endpoints": [e.view() for e in changed]}

    @app.get("/receiver/notices", tags=["receiver"], summary="The last webhook notices the receiver got, oldest first")
    async def notices(
        path: Annotated[str | None, Query(description="only those POSTed to this path, e.g. /hooks/fr")] = None,
        limit: Annotated[int | None, Query(ge=1, le=10_000)] = None,
    ) -> dict[str, Any]:
        return {
            "items": [n.as_dict() for n in simulator.notices.notices(path=path, limit=limit)],
            "total": simulator.notices.total,
        }

    @app.delete("/receiver/notices", tags=["receiver"], status_code=204, summary="Forget the kept notices")
    async def forget() -> Response:
        simulator.notices.clear()
        return Response(status_code=204)

    return app
