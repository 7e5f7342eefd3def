"""Procedure service bootstrap: database, broker clients, the availability consumer and the outbox relay."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

from fastapi import FastAPI
from prometheus_client import CollectorRegistry

from services.procedure.api import router
from services.procedure.handlers import ProcedureService
from services.procedure.models import Base
from shared.config import ConfigError, Settings
from shared.db import make_engine, ping, session_factory
from shared.events import AvailabilityData
from shared.http import add_ops_routes
from shared.kafka import EventConsumer, Publisher, ensure_topics
from shared.tasks import BackgroundTasks


def create_app(settings: Settings) -> FastAPI:
    """The procedure service's app; nothing connects until its lifespan starts."""
    if settings.procedure.mode != "auto":
        raise ConfigError("procedure.mode = 'confirm' is not implemented yet; use 'auto'")
    registry = CollectorRegistry()
    engine = make_engine(settings.database_url("procedure"))
    sessions = session_factory(engine)
    service = ProcedureService(settings=settings, sessions=sessions)
    tasks = BackgroundTasks()
    publisher = Publisher(settings.kafka, client_id="procedure")

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with engine.begin() as connection:
            await connection.run_sync(Base.metadata.create_all)
        await ensure_topics(settings.kafka)
        await publisher.start()
        consumer = EventConsumer(
            settings=settings.kafka,
            topic=settings.kafka.availability_topic,
            group_id=f"{settings.kafka.topic_prefix}.procedure",
            data_model=AvailabilityData,
            handler=service.on_availability,
            publisher=publisher,
        )
        app.state.consumer = consumer
        tasks.start(consumer.run(), name="availability-consumer")
        tasks.start(service.relay_outbox(publisher), name="outbox-relay")
        try:
            yield
        finally:
            await tasks.stop()
            await publisher.stop()
            await engine.dispose()

    app = FastAPI(title="luccs-fallback procedure service", version="1", lifespan=lifespan)
    app.state.procedures = service
    app.state.sessions = sessions
    app.include_router(router)

    async def database_ready() -> str | None:
        await ping(engine)
        return None

    add_ops_routes(app, checks={"database": database_ready, "loops": tasks.problem}, registry=registry)
    return app
