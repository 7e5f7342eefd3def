"""Notifier bootstrap: the composition root (database, texts, senders and webhook workers, planner, dispatcher,
reach keeper), the three consumers (EO registry, procedures, advisories) and the HTTP app. Nothing connects at
import time."""

from __future__ import annotations

import contextlib
import hashlib
import random
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from aiokafka import ConsumerRecord
from fastapi import Depends, FastAPI
from prometheus_client import CollectorRegistry
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from services.notifier.api import router
from services.notifier.dispatch import Dispatcher
from services.notifier.fanout_metrics import FanoutMetrics
from services.notifier.jobs import Sender
from services.notifier.mail import SmtpSender
from services.notifier.metrics import NotifierMetrics
from services.notifier.migrate import upgrade
from services.notifier.models import EoRow
from services.notifier.notices import Contacts, NoticeTexts
from services.notifier.planning import NoticeDesk, Planner
from services.notifier.reach import ReachKeeper
from services.notifier.registry import RegistryCatchUp
from services.notifier.webhook_http import WebhookHttpClient
from services.notifier.webhook_workers import WebhookWorkers
from services.notifier.webhooks import WebhookSender, webhook_ssl_context
from shared.auth import authorize, build_guard, install_guard
from shared.config import Settings
from shared.db import make_engine, ping, session_factory
from shared.events import AdvisoryData, CloudEvent, DeliveryChannel, EoData, MaintenanceData, ProcedureData
from shared.gc_settle import GcSettler
from shared.http import add_ops_routes
from shared.kafka import EventConsumer, Item, Publisher, ensure_topics
from shared.tasks import BackgroundTasks

__all__ = ["NotifierParts", "build_notifier", "create_app"]


@dataclass
class NotifierParts:
    """Everything the notifier is made of, wired; the app runs it, tests and the benchmark drive it."""

    engine: AsyncEngine
    sessions: async_sessionmaker[AsyncSession]
    metrics: NotifierMetrics
    planner: Planner
    dispatcher: Dispatcher
    reach: ReachKeeper
    senders: dict[DeliveryChannel, Sender]
    texts: NoticeTexts
    webhook_workers: WebhookWorkers | None = None

    async def start(self) -> None:
        """Start what runs beside the loops: the webhook workers (``notifier.workers`` > 1)."""
        if self.webhook_workers is not None:
            await self.webhook_workers.start()

    async def aclose(self) -> None:
        for sender in self.senders.values():
            await sender.aclose()
        await self.engine.dispose()


def build_notifier(
    settings: Settings, *, registry: CollectorRegistry, publisher: Publisher | None = None, poll_s: float = 1.0,
    clock: Callable[[], datetime] = lambda: datetime.now(UTC), rng: random.Random | None = None,
) -> NotifierParts:
    """Wire the notifier's parts from the settings (creates no connection yet); ``clock`` is when its
    deliveries are planned, due and escalated (tests move it on instead of waiting), ``rng`` draws the jitter
    of their retries (tests pin it)."""
    cfg = settings.notifier
    engine = make_engine(settings.database_url("notifier"))
    sessions = session_factory(engine)
    metrics = NotifierMetrics(registry)
    texts = NoticeTexts(contacts=Contacts(
        servicedesk=cfg.servicedesk_contact or cfg.servicedesk_email, bureau=cfg.bureau_contact or cfg.bureau_email,
    ))
    http = WebhookHttpClient(
        allow_private=cfg.allow_private_webhooks, ssl_context=webhook_ssl_context(cfg),
        max_idle_per_origin=cfg.per_host_concurrency,
    )
    in_process = WebhookSender(settings=cfg, client=http)
    webhooks: Sender = in_process
    workers = None
    if cfg.workers > 1:  # the POSTs in child processes; the parent claims, decides, records and sends e-mail
        webhooks = workers = WebhookWorkers(workers=cfg.workers, settings=cfg, in_process=in_process,
                                            logs=settings.logging)
    senders: dict[DeliveryChannel, Sender] = {
        DeliveryChannel.WEBHOOK: webhooks,
        DeliveryChannel.EMAIL: SmtpSender(settings=settings.smtp),
    }
    dispatcher = Dispatcher(
        settings=settings, sessions=sessions, senders=senders, metrics=metrics, publisher=publisher, poll_s=poll_s,
        clock=clock, rng=rng,
    )
    desk = NoticeDesk(settings=cfg, sessions=sessions, texts=texts, metrics=metrics, clock=clock)
    reach = ReachKeeper(desk, on_planned=dispatcher.wake, poll_s=poll_s)

    def planned() -> None:
        dispatcher.wake()
        reach.wake()  # a fan-out committed: an EO registered meanwhile may have been left out of it

    planner = Planner(desk, on_planned=planned, on_registry=reach.wake)
    return NotifierParts(engine=engine, sessions=sessions, metrics=metrics, planner=planner, dispatcher=dispatcher,
                         reach=reach, senders=senders, texts=texts, webhook_workers=workers)


def create_app(settings: Settings, *, own_process: bool = False) -> FastAPI:
    """The notifier's app; nothing connects until its lifespan starts.

    ``own_process``: the notifier is alone in its process (``luccs-fallback notifier``), so it may tune the
    process's garbage collector (:mod:`shared.gc_settle`): a fan-out allocates and drops hundreds of thousands
    of short-lived objects, and at CPython's default thresholds the collector traversed the service's
    long-lived ones again and again. Beside other services or in a test's process it is left as it is."""
    registry = CollectorRegistry()
    publisher = Publisher(settings.kafka, client_id="notifier")
    parts = build_notifier(settings, registry=registry, publisher=publisher)
    tasks = BackgroundTasks()
    group = f"{settings.kafka.topic_prefix}.notifier"
    # Every notifier instance reads the whole EO registry: a consumer group of its own.
    eos_group = f"{group}.eos.{settings.notifier.instance_id}"
    catch_up = RegistryCatchUp(settings=settings.kafka, group_id=eos_group)

    async def on_eos(items: Sequence[Item[EoData]]) -> None:
        await parts.planner.on_eo_batch(items)
        for _event, record in items:
            catch_up.observe(record)

    async def on_procedure(event: CloudEvent[ProcedureData] | None, record: ConsumerRecord[bytes, bytes]) -> None:
        await catch_up.wait(settings.notifier.registry_catchup_s)
        await parts.planner.on_procedure(event, record)

    async def on_maintenance(event: CloudEvent[MaintenanceData] | None, record: ConsumerRecord[bytes, bytes]) -> None:
        await catch_up.wait(settings.notifier.registry_catchup_s)
        await parts.planner.on_maintenance(event, record)

    async def on_advisory(event: CloudEvent[AdvisoryData] | None, record: ConsumerRecord[bytes, bytes]) -> None:
        await catch_up.wait(settings.notifier.registry_catchup_s)
        await parts.planner.on_advisory(event, record)

    # Procedures and advisories are shared out among notifiers; the EO registry is read by each in full.
    # All three consumers join their groups at once; fan-outs wait for the registry to be read.
    procedures = EventConsumer(
        settings=settings.kafka, topic=settings.kafka.procedures_topic, group_id=group,
        data_model=ProcedureData, handler=on_procedure, publisher=publisher,
    )
    # Maintenance announcements share the procedures topic: a group of their own reads them (each consumer
    # skips the other's events).
    maintenance = EventConsumer(
        settings=settings.kafka, topic=settings.kafka.procedures_topic, group_id=f"{group}.maintenance",
        data_model=MaintenanceData, handler=on_maintenance, publisher=publisher,
    )
    advisories = EventConsumer(
        settings=settings.kafka, topic=settings.kafka.advisories_topic, group_id=f"{group}.advisories",
        data_model=AdvisoryData, handler=on_advisory, publisher=publisher,
    )

    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        async with contextlib.AsyncExitStack() as stack:  # what was started is stopped, in reverse order
            stack.push_async_callback(parts.aclose)
            stack.push_async_callback(publisher.stop)
            await upgrade(parts.engine)
            parts.texts.compile_all()  # not on the first fan-out's path
            await ensure_topics(settings.kafka)
            await publisher.start()
            await catch_up.prepare()
            await parts.start()
            stack.push_async_callback(tasks.stop)
            if own_process:
                settler = GcSettler().install()
                stack.callback(settler.close)
                settler.settle()  # what the start built (modules, app, templates) frozen, before any work starts
            _start_loops()
            yield

    def _start_loops() -> None:
        tasks.start(
            EventConsumer(
                settings=settings.kafka, topic=settings.kafka.eos_topic, group_id=eos_group,
                data_model=EoData, batch_handler=on_eos, publisher=publisher, allow_tombstones=True,
            ).run(),
            name="eo-consumer",
        )
        tasks.start(procedures.run(), name="procedure-consumer")
        tasks.start(advisories.run(), name="advisory-consumer")
        tasks.start(maintenance.run(), name="maintenance-consumer")
        tasks.start(parts.dispatcher.run(), name="dispatcher")
        tasks.start(parts.reach.run(), name="reach")

    async def eo_of_key(api_key: str) -> str | None:
        digest = hashlib.sha256(api_key.encode()).hexdigest()
        async with parts.sessions() as session:
            return await session.scalar(select(EoRow.eori).where(EoRow.api_key_hash == digest))

    app = FastAPI(title="luccs-fallback notifier", version="1", lifespan=lifespan, dependencies=[Depends(authorize)])
    app.state.sessions = parts.sessions
    app.include_router(router)

    async def database_ready() -> str | None:
        await ping(parts.engine)
        return None

    async def registry_ready() -> str | None:
        if not catch_up.done.is_set():
            return "reading the EO registry before fanning out"
        if not procedures.stats.assigned:
            return "waiting for the procedures topic's partitions"
        return None

    fanouts = FanoutMetrics(registry=registry, sessions=parts.sessions)
    add_ops_routes(
        app, checks={"database": database_ready, "registry": registry_ready, "loops": tasks.problem},
        registry=registry, liveness=tasks.problem, before_metrics=fanouts.refresh,
    )
    install_guard(app, build_guard(service="notifier", api=settings.api, eo_keys=eo_of_key),
                  max_body_bytes=settings.api.max_body_bytes)
    return app
