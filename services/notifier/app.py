"""Notifier bootstrap: database, broker clients, the EO and procedure consumers, the dispatcher."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

import httpx
from fastapi import FastAPI
from prometheus_client import CollectorRegistry

from services.notifier.api import router
from services.notifier.handlers import Notifier
from services.notifier.models import Base
from shared.config import Settings
from shared.db import make_engine, ping, session_factory
from shared.events import EoData, ProcedureData
from shared.http import add_ops_routes
from shared.kafka import EventConsumer, Publisher, ensure_topics
from shared.tasks import BackgroundTasks


def create_app(settings: Settings) -> FastAPI:
    """The notifier's app; nothing connects until its lifespan starts."""
    registry = CollectorRegistry()
    engine = make_engine(settings.database_url("notifier"))
    sessions = session_factory(engine)
    tasks = BackgroundTasks()
    publisher = Publisher(settings.kafka, client_id="notifier")
    group = f"{settings.kafka.topic_prefix}.notifier"

    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        async with engine.begin() as connection:
            await connection.run_sync(Base.metadata.create_all)
        await ensure_topics(settings.kafka)
        await publisher.start()
        limits = httpx.Limits(max_connections=settings.notifier.concurrency, max_keepalive_connections=100)
        async with httpx.AsyncClient(follow_redirects=False, limits=limits) as client:
            notifier = Notifier(settings=settings, sessions=sessions, client=client, publisher=publisher)
            # Separate groups: the EO registry is read in full by every notifier, procedures are shared out.
            tasks.start(
                EventConsumer(
                    settings=settings.kafka, topic=settings.kafka.eos_topic, group_id=f"{group}.eos",
                    data_model=EoData, handler=notifier.on_eo, publisher=publisher, allow_tombstones=True,
                ).run(),
                name="eo-consumer",
            )
            tasks.start(
                EventConsumer(
                    settings=settings.kafka, topic=settings.kafka.procedures_topic, group_id=group,
                    data_model=ProcedureData, handler=notifier.on_procedure, publisher=publisher,
                ).run(),
                name="procedure-consumer",
            )
            tasks.start(notifier.dispatch_loop(), name="dispatcher")
            try:
                yield
            finally:
                await tasks.stop()
        await publisher.stop()
        await engine.dispose()

    app = FastAPI(title="luccs-fallback notifier", version="1", lifespan=lifespan)
    app.state.sessions = sessions
    app.include_router(router)

    async def database_ready() -> str | None:
        await ping(engine)
        return None

    add_ops_routes(app, checks={"database": database_ready, "loops": tasks.problem}, registry=registry)
    return app
