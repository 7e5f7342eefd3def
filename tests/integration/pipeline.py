"""The procedure service and a notifier wired over the real broker, for end-to-end tests in one process:
the procedure service's app served by uvicorn on loopback, a notifier consuming the procedures topic (its
procedure events, and with ``maintenance`` its maintenance announcements too) and delivering to a real
webhook receiver, with EOs registered in their languages."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import httpx

from services.notifier.app import NotifierParts
from services.procedure.app import create_app
from shared.config import KafkaSettings, Settings
from shared.events import Language, MaintenanceData, ProcedureData
from shared.kafka import EventConsumer, Publisher
from tests.integration.test_notifier_delivery import notifier_settings, register, running_notifier
from tests.support import WebhookReceiver, serving

__all__ = ["ProcedureAndNotifier", "procedure_and_notifier"]


@dataclass
class ProcedureAndNotifier:
    client: httpx.AsyncClient
    """Talks to the procedure service."""
    notifier: NotifierParts
    hooks: WebhookReceiver
    """Every EO's webhook: ``/<EORI>``."""
    publisher: Publisher
    """On the test's topics (the notifier's dead letters go through it too)."""
    kafka: KafkaSettings


@contextlib.asynccontextmanager
async def procedure_and_notifier(
    settings: Settings, *, tmp_path: Path, eos: Mapping[str, Language], maintenance: bool = False,
) -> AsyncIterator[ProcedureAndNotifier]:
    """Run the procedure service on ``settings`` and a notifier (SQLite in ``tmp_path``) on its topics, the
    ``eos`` registered with the notifier, until the block ends."""
    kafka = settings.kafka
    prefix = kafka.topic_prefix
    hooks = WebhookReceiver().start()
    notifier = notifier_settings(kafka.bootstrap_servers, prefix, f"sqlite:///{tmp_path / 'notifier.db'}")
    try:
        async with running_notifier(notifier) as parts:
            for eori, language in eos.items():
                await register(parts, eori, hooks.url(f"/{eori}"), language)
            publisher = Publisher(kafka, client_id="test-pipeline")
            await publisher.start()
            consumers = [asyncio.create_task(EventConsumer(
                settings=kafka, topic=kafka.procedures_topic, group_id=f"{prefix}.notifier",
                data_model=ProcedureData, handler=parts.planner.on_procedure, publisher=publisher,
            ).run())]
            if maintenance:
                consumers.append(asyncio.create_task(EventConsumer(
                    settings=kafka, topic=kafka.procedures_topic, group_id=f"{prefix}.notifier.maintenance",
                    data_model=MaintenanceData, handler=parts.planner.on_maintenance, publisher=publisher,
                ).run()))
            try:
                async with serving(create_app(settings)) as client:
                    yield ProcedureAndNotifier(client, parts, hooks, publisher, kafka)
            finally:
                for consumer in consumers:
                    consumer.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await consumer
                await publisher.stop()
    finally:
        hooks.stop()
