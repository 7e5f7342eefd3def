"""What every service serves besides its API: /healthz, /readyz, /metrics; and how it is run."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Any

import uvicorn
from fastapi import FastAPI, Request, Response
from fastapi.encoders import jsonable_encoder
from fastapi.responses import JSONResponse, StreamingResponse
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy.exc import InterfaceError, OperationalError

from shared.exposition import exposition

log = logging.getLogger(__name__)

ReadinessCheck = Callable[[], Awaitable[str | None]]
"""Returns None when the dependency is fine, else what is wrong."""


class Health(BaseModel):
    """``/healthz``: ok, or (503) failing with the problem; ``detail`` like every error answer."""

    status: str = Field(description="ok or failing")
    problem: str | None = Field(None, description="What failed (on a 503)")
    detail: str | None = Field(None, description="The same, in the shape of every error answer (on a 503)")


class Readiness(BaseModel):
    """``/readyz``: ready, or (503) not ready with each failing check; plus what the service says about
    itself (e.g. ``leader`` and ``instance`` of the procedure service)."""

    model_config = ConfigDict(extra="allow")

    status: str = Field(description="ready or not ready")
    problems: dict[str, str] | None = Field(None, description="Each failing check and why (on a 503)")
    detail: str | None = Field(None, description="The failing checks, in the shape of every error answer (on a 503)")


_METRICS_MEDIA = CONTENT_TYPE_LATEST.split(";")[0]


def add_ops_routes(
    app: FastAPI,
    *,
    checks: Mapping[str, ReadinessCheck],
    registry: CollectorRegistry,
    liveness: ReadinessCheck | None = None,
    before_metrics: Callable[[], Awaitable[None]] | None = None,
    describe: Callable[[], Awaitable[Mapping[str, Any]]] | None = None,
) -> None:
    """/healthz (alive: ``liveness`` passes, e.g. no background loop has died), /readyz (every check
    passes; ``describe`` adds what the service says about itself, e.g. which instance leads), /metrics
    (after ``before_metrics``, which reads what the series show; if it fails, the series show what it read
    last)."""

    @app.exception_handler(OperationalError)
    @app.exception_handler(InterfaceError)
    @app.exception_handler(ConnectionError)
    async def dependency_unavailable(_request: Request, exc: Exception) -> JSONResponse:
        # The database (or another dependency) is down or unreachable: temporary, not a bug; clients may retry.
        return JSONResponse({"detail": "a dependency (the database) is unavailable, try again shortly"},
                            status_code=503, headers={"Retry-After": "5"})

    @app.get("/healthz", tags=["ops"], summary="The process is alive and none of its loops has died",
             response_model=Health, response_model_exclude_none=True,
             responses={503: {"model": Health, "description": "A loop of the process has died"}})
    async def healthz() -> Any:
        problem = await _run_check(liveness) if liveness is not None else None
        if problem:
            return JSONResponse({"status": "failing", "problem": problem, "detail": problem}, status_code=503)
        return Health(status="ok")

    @app.get("/readyz", tags=["ops"], summary="Ready: every check of this service passes (a 503 names those that fail)",
             response_model=Readiness,
             responses={503: {"model": Readiness, "description": "Not ready: `problems` names the failing checks"}})
    async def readyz() -> JSONResponse:
        results = await asyncio.gather(*(_run_check(check) for check in checks.values()))
        problems = {name: problem for name, problem in zip(checks, results, strict=True) if problem}
        about: Mapping[str, Any] = {}
        if describe is not None:
            with contextlib.suppress(Exception):  # what it says is extra; the checks decide readiness
                about = jsonable_encoder(await asyncio.wait_for(describe(), timeout=3.0))
        if problems:
            said = "not ready: " + "; ".join(f"{name}: {problem}" for name, problem in problems.items())
            return JSONResponse({"status": "not ready", "problems": problems, "detail": said, **about},
                                status_code=503)
        return JSONResponse({"status": "ready", **about})

    @app.get("/metrics", tags=["ops"], summary="Prometheus metrics", response_class=Response,
             responses={200: {"description": "Prometheus text exposition format",
                              "content": {_METRICS_MEDIA: {"schema": {"type": "string"}}}}})
    async def metrics() -> Response:
        if before_metrics is not None:
            try:
                await asyncio.wait_for(before_metrics(), timeout=5.0)
            except Exception as exc:
                log.warning("metrics not refreshed, serving the last values: %s: %s", type(exc).__name__, exc)
        # Rendered as it is sent (a detector's 100,000 targets make a text of 14 MB: see shared/exposition.py).
        return StreamingResponse(exposition(registry), media_type=CONTENT_TYPE_LATEST)


async def _run_check(check: ReadinessCheck) -> str | None:
    try:
        return await asyncio.wait_for(check(), timeout=3.0)
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"


async def serve(app: FastAPI, *, host: str, port: int, ssl_context: ssl.SSLContext | None = None) -> None:
    """Run ``app`` with uvicorn until cancelled or signalled; if it cannot start, raise saying why. With
    ``ssl_context`` (``ApiSettings.server_ssl_context``) the port speaks https only."""
    failures: list[BaseException] = []
    lifespan = app.router.lifespan_context

    @contextlib.asynccontextmanager
    async def noting_why_startup_failed(app_: Any) -> AsyncIterator[Any]:
        started = False
        try:
            async with lifespan(app_) as state:
                started = True
                yield state
        except Exception as exc:
            if not started:
                failures.append(exc)
            raise

    app.router.lifespan_context = noting_why_startup_failed
    config = uvicorn.Config(
        app, host=host, port=port, log_config=None, access_log=False, lifespan="on",
        ssl_context_factory=None if ssl_context is None else lambda _config, _default: ssl_context,
    )
    server = uvicorn.Server(config)
    with contextlib.suppress(SystemExit):  # uvicorn's way to say the start-up failed; said below instead
        try:
            await server.serve()
        except asyncio.CancelledError:
            for listener in server.servers:  # uvicorn closes its listening sockets only on a graceful exit
                listener.close()
            raise
    if not server.started:
        why = f"{type(failures[0]).__name__}: {failures[0]}" if failures else "see the log above"
        raise RuntimeError(f"{app.title} did not start on {host}:{port}: {why}")
