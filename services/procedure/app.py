"""Procedure service bootstrap: database and migrations, broker clients, the consumer, outbox and ticks."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

from fastapi import Depends, FastAPI
from prometheus_client import CollectorRegistry, Gauge

from services.procedure.api import router
from services.procedure.handlers import ProcedureService
from services.procedure.migrate import upgrade
from services.procedure.notifier_summary import notifier_summary
from services.procedure.outbox import Outbox
from services.procedure.registry import EoRegistry
from services.procedure.sealing import Sealer, load_or_create_key
from services.procedure.status_page import router as status_page_router
from shared.auth import authorize, build_guard, install_guard
from shared.config import Settings
from shared.db import make_engine, ping, session_factory
from shared.events import AvailabilityData
from shared.http import add_ops_routes
from shared.kafka import EventConsumer, Publisher, ensure_topics
from shared.tasks import BackgroundTasks


def create_app(settings: Settings) -> FastAPI:
    """The procedure service's app; nothing connects until its lifespan starts."""
    registry = CollectorRegistry()
    engine = make_engine(settings.database_url("procedure"))
    sessions = session_factory(engine)
    tasks = BackgroundTasks()
    publisher = Publisher(settings.kafka, client_id="procedure")
    outbox = Outbox(sessions, publisher)
    service = ProcedureService(settings=settings, sessions=sessions, outbox=outbox)
    key = settings.procedure.sealing_key
    sealer = Sealer(key.get_secret_value() if key else load_or_create_key(settings.data_dir / "procedure.key"))
    eo_registry = EoRegistry(kafka=settings.kafka, sessions=sessions, sealer=sealer,
                             outbox_ready=outbox.wakeup)
    outbox_backlog = Gauge("luccs_procedure_outbox_backlog", "Events recorded but not yet published",
                           registry=registry)
    subscribers = Gauge("luccs_procedure_stream_subscribers", "Open /api/v1/stream connections", registry=registry)
    subscribers.set_function(lambda: service.broadcaster.subscribers)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with contextlib.AsyncExitStack() as stack:  # what was started is stopped, in reverse order
            stack.push_async_callback(engine.dispose)
            stack.push_async_callback(publisher.stop)
            await upgrade(engine)
            await service.load()
            await ensure_topics(settings.kafka)
            await publisher.start()
            stack.push_async_callback(outbox.settle)
            stack.push_async_callback(tasks.stop)
            await _start_loops(app)
            yield

    async def _start_loops(app: FastAPI) -> None:
        consumer = EventConsumer(
            settings=settings.kafka,
            topic=settings.kafka.availability_topic,
            group_id=f"{settings.kafka.topic_prefix}.procedure",
            data_model=AvailabilityData,
            batch_handler=service.on_availability_batch,
            publisher=publisher,
        )
        app.state.consumer = consumer
        tasks.start(consumer.run(), name="availability-consumer")
        tasks.start(outbox.run(on_backlog=outbox_backlog.set), name="outbox")
        tasks.start(service.run_ticks(), name="ticks")
        outbox.wakeup.set()  # publish what a previous run committed but did not get out

    async def eo_of_key(api_key: str) -> str | None:
        eo = await eo_registry.authenticate(api_key)
        return eo.eori if eo is not None else None

    app = FastAPI(title="luccs-fallback procedure service", version="1", lifespan=lifespan,
                  dependencies=[Depends(authorize)])
    app.state.settings = settings
    app.state.procedures = service
    app.state.registry = eo_registry
    app.state.sessions = sessions
    app.state.notifier_summary = notifier_summary(settings)
    app.include_router(router)
    app.include_router(status_page_router)

    async def database_ready() -> str | None:
        await ping(engine)
        return None

    add_ops_routes(app, checks={"database": database_ready, "loops": tasks.problem}, registry=registry,
                   liveness=tasks.problem)
    install_guard(app, build_guard(service="procedure", api=settings.api, eo_keys=eo_of_key),
                  max_body_bytes=settings.api.max_body_bytes)
    return app
