"""The procedure service and a real notifier on loopback, in this process, over the real broker: the system
the Servicedesk console is tested (tests/e2e/test_status_page.py) and photographed
(``python -m scripts.console_screenshots``) on. Observations are published to the availability topic as a
detector would; EOs are registered through the procedure API, their webhooks land in a loopback receiver."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

import httpx
import uvicorn
from fastapi import FastAPI
from pydantic import SecretStr

from services.notifier.app import create_app as create_notifier
from services.procedure.app import create_app as create_procedure
from shared.config import ApiSettings, KafkaSettings, NotifierSettings, ProcedureSettings, Settings
from shared.events import AvailabilityData, CloudEvent, Component, ComponentState, EventType
from shared.kafka import Publisher
from tests.support import WebhookReceiver, free_port

__all__ = ["ConsoleSystem", "running_console"]


@dataclass
class ConsoleSystem:
    url: str
    """The procedure service (the console is at ``url + "/"``)."""
    notifier_url: str
    receiver: WebhookReceiver
    eoris: list[str]
    settings: Settings
    publisher: Publisher

    async def observe(self, component: Component, state: ComponentState, *, latency_ms: float = 120.0) -> None:
        """Publish one detector's observation of the component's only target, as the detector would."""
        now = datetime.now(UTC)
        event = CloudEvent[AvailabilityData](
            source="/tests/console", type=EventType.AVAILABILITY_CHANGED, subject=component.value,
            data=AvailabilityData(
                target_id=component.value, component=component, detector_instance="console-test", state=state,
                since=now, observed_at=now, probe="as4", ok=state == ComponentState.UP,
                reason="ok" if state == ComponentState.UP else "refused", latency_ms=latency_ms,
            ),
        )
        await self.publisher.publish(self.settings.kafka.availability_topic, event, key=component.value)


@contextlib.asynccontextmanager
async def _serving(app: FastAPI, port: int) -> AsyncIterator[str]:
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_config=None))
    task = asyncio.create_task(server.serve())
    try:
        async with asyncio.timeout(60):
            while not server.started:
                if task.done():
                    task.result()  # raises what stopped it
                await asyncio.sleep(0.05)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await task


@contextlib.asynccontextmanager
async def running_console(
    *, data_dir: Path, kafka_bootstrap: str, topic_prefix: str, operator_token: str, eos: int = 3,
    mode: Literal["auto", "confirm"] = "confirm",
) -> AsyncIterator[ConsoleSystem]:
    """Start the notifier and the procedure service (``mode``: auto or confirm), register ``eos`` EOs with
    webhooks to a loopback receiver, and yield the system; everything stops on exit."""
    notifier_port = free_port()
    settings = Settings(
        data_dir=data_dir,
        kafka=KafkaSettings(bootstrap_servers=kafka_bootstrap, topic_prefix=topic_prefix),
        api=ApiSettings(operator_tokens=[SecretStr(operator_token)]),
        procedure=ProcedureSettings(mode=mode, stale_after_s=3600, tick_s=1,
                                    notifier_url=f"http://127.0.0.1:{notifier_port}",
                                    notifier_token=SecretStr(operator_token)),
        notifier=NotifierSettings(allow_private_webhooks=True, allow_insecure_webhooks=True, backoff_base_s=0.2),
    )
    receiver = WebhookReceiver().start()
    publisher = Publisher(settings.kafka, client_id="console-test")
    try:
        async with _serving(create_notifier(settings), notifier_port) as notifier_url, \
                _serving(create_procedure(settings), free_port()) as url:
            await publisher.start()
            eoris = [f"LU{100000000 + i}" for i in range(1, eos + 1)]
            async with httpx.AsyncClient(base_url=url, timeout=10,
                                         headers={"Authorization": f"Bearer {operator_token}"}) as client:
                for number, eori in enumerate(eoris):
                    created = await client.post("/api/v1/eos", json={
                        "eori": eori, "name": f"Trader {number + 1}", "language": ["fr", "en", "de"][number % 3],
                        "webhook_url": receiver.url(f"/hooks/{eori}"), "webhook_secret": "console-webhook-secret",
                    })
                    created.raise_for_status()
            yield ConsoleSystem(url=url, notifier_url=notifier_url, receiver=receiver, eoris=eoris,
                                settings=settings, publisher=publisher)
    finally:
        await publisher.stop()
        receiver.stop()
