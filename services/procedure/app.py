"""Procedure service bootstrap: database and migrations, broker clients, leadership, and the leader's loops
(the consumer, the outbox and the ticks), which run only while this instance leads."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable, Coroutine
from datetime import UTC, datetime
from typing import Any

from fastapi import Depends, FastAPI
from prometheus_client import CollectorRegistry, Gauge
from sqlalchemy.exc import SQLAlchemyError

from services.procedure.api import router
from services.procedure.api.bulk import IMPORT_PATH
from services.procedure.commands import ProcedureCommands
from services.procedure.handlers import ProcedureService
from services.procedure.leadership import Leadership, NotLeader
from services.procedure.metrics import ProcedureMetrics
from services.procedure.migrate import upgrade
from services.procedure.notifier_summary import notifier_summary
from services.procedure.outbox import Outbox
from services.procedure.public_page import router as public_page_router
from services.procedure.queries import leadership_view
from services.procedure.registry import EoRegistry
from services.procedure.sealing import Sealer, load_or_create_key
from services.procedure.status_page import router as status_page_router
from shared.auth import authorize, build_guard, install_guard
from shared.config import Settings
from shared.db import make_engine, ping, session_factory
from shared.events import AvailabilityData, ComponentState
from shared.http import add_ops_routes
from shared.kafka import EventConsumer, Publisher, ensure_topics
from shared.tasks import BackgroundTasks

log = logging.getLogger(__name__)


async def _while_leading(loop: Coroutine[Any, Any, Any]) -> None:
    """Run a leader's loop; a fence refusing it (deposed) ends it quietly: the leadership loop stands by."""
    with contextlib.suppress(NotLeader):
        await loop


def _now() -> datetime:
    return datetime.now(UTC)


def create_app(settings: Settings, *, clock: Callable[[], datetime] = _now) -> FastAPI:
    """The procedure service's app; nothing connects until its lifespan starts. ``clock``: tests move time."""
    registry = CollectorRegistry()
    engine = make_engine(settings.database_url("procedure"))
    sessions = session_factory(engine)
    tasks = BackgroundTasks()
    leader_tasks = BackgroundTasks()  # only while this instance leads
    cfg = settings.procedure
    leadership = Leadership(database_url=settings.database_url("procedure"), instance_id=cfg.instance_id,
                            failover_s=cfg.failover_s)
    publisher = Publisher(settings.kafka, client_id="procedure")
    outbox = Outbox(sessions, publisher, may_publish=leadership.holds)
    leadership.on_commands = outbox.wakeup.set  # a command's events, committed on any instance
    service = ProcedureService(settings=settings, sessions=sessions, outbox=outbox, leadership=leadership,
                               clock=clock)
    key = settings.procedure.sealing_key
    sealer = Sealer(key.get_secret_value() if key else load_or_create_key(settings.data_dir / "procedure.key"))
    eo_registry = EoRegistry(kafka=settings.kafka, sessions=sessions, sealer=sealer,
                             outbox_ready=outbox.wakeup, leadership=leadership)
    outbox_backlog = Gauge("luccs_procedure_outbox_backlog", "Events recorded but not yet published",
                           registry=registry)
    subscribers = Gauge("luccs_procedure_stream_subscribers", "Open /api/v1/stream connections", registry=registry)
    subscribers.set_function(lambda: service.broadcaster.subscribers)
    metrics = ProcedureMetrics(registry=registry, sessions=sessions, clock=clock,
                               eo_endpoints_down=lambda: sum(
                                   v.state == ComponentState.DOWN for v in service.views().eos.values()))
    leader_gauge = Gauge("luccs_procedure_leader", "1 while this instance leads (decides and publishes), else 0",
                         registry=registry)
    leader_gauge.set_function(lambda: 1 if leadership.holds() else 0)

    consumer = EventConsumer(
        settings=settings.kafka,
        topic=settings.kafka.availability_topic,
        group_id=f"{settings.kafka.topic_prefix}.procedure",
        data_model=AvailabilityData,
        batch_handler=service.on_availability_batch,
        publisher=publisher,
        assign_all=True,  # one instance consumes at a time: no group rebalance to wait for on failover
        stop_on=(NotLeader,),
    )

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with contextlib.AsyncExitStack() as stack:  # what was started is stopped, in reverse order
            stack.push_async_callback(engine.dispose)
            await leadership.start()  # on SQLite: refuses to start beside another instance
            if not leadership.single_instance and cfg.sealing_key is None:
                log.warning("procedure.sealing_key is not set: the key is a file in data_dir, but every instance "
                            "sharing this database must seal EO webhook secrets with the same key: set it")
            stack.push_async_callback(leadership.close)
            stack.push_async_callback(publisher.stop)
            await upgrade(engine)
            await service.load()
            await ensure_topics(settings.kafka)
            await publisher.start()
            stack.push_async_callback(outbox.settle)
            stack.push_async_callback(leader_tasks.stop)
            stack.push_async_callback(tasks.stop)
            app.state.consumer = metrics.consumer = consumer
            tasks.start(leadership.run(on_elected=_lead, on_deposed=_stand_by), name="leadership")
            tasks.start(_refresh_while_standing_by(), name="standby-reads")
            yield

    async def _lead() -> None:
        await service.take_over()
        outbox.reset()
        leader_tasks.start(_while_leading(consumer.run()), name="availability-consumer")
        leader_tasks.start(_while_leading(outbox.run(on_backlog=outbox_backlog.set)), name="outbox")
        leader_tasks.start(_while_leading(service.run_ticks()), name="ticks")
        outbox.wakeup.set()  # publish what a previous leader (or run) committed but did not get out

    async def _stand_by() -> None:
        await leader_tasks.stop()
        outbox.reset()

    async def _refresh_while_standing_by() -> None:
        while True:
            await asyncio.sleep(cfg.tick_s)
            if not leadership.holds():
                with contextlib.suppress(SQLAlchemyError, OSError):
                    await service.refresh()

    async def eo_of_key(api_key: str) -> str | None:
        eo = await eo_registry.authenticate(api_key)
        return eo.eori if eo is not None else None

    app = FastAPI(title="luccs-fallback procedure service", version="1", lifespan=lifespan,
                  dependencies=[Depends(authorize)])
    app.state.settings = settings
    app.state.clock = clock
    app.state.procedures = service
    app.state.commands = ProcedureCommands(service=service, sessions=sessions, clock=clock)
    app.state.registry = eo_registry
    app.state.sessions = sessions
    app.state.leadership = leadership
    app.state.notifier_summary = notifier_summary(settings)
    app.include_router(router)
    app.include_router(status_page_router)
    app.include_router(public_page_router)

    async def database_ready() -> str | None:
        await ping(engine)
        return None

    async def leader_tasks_problem() -> str | None:
        return await tasks.problem() or await leader_tasks.problem()

    async def who_leads() -> dict[str, Any]:
        return await leadership_view(leadership)

    add_ops_routes(app, checks={"database": database_ready, "loops": leader_tasks_problem}, registry=registry,
                   liveness=leader_tasks_problem, describe=who_leads, before_metrics=metrics.refresh)
    install_guard(app, build_guard(service="procedure", api=settings.api, eo_keys=eo_of_key),
                  max_body_bytes=settings.api.max_body_bytes, streamed_paths=frozenset({IMPORT_PATH}))
    return app
