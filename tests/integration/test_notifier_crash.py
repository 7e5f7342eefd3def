"""The notifier killed (SIGKILL) in the middle of a 2,000-EO fan-out and restarted: every EO gets the notice,
and a notice sent twice carries the same Idempotency-Key both times.

The notifier runs as a user runs it (``luccs-fallback notifier --config FILE``) over the real broker, with
its delivery log in SQLite; the EOs' webhooks point at a loopback receiver slow enough for the kill to land
mid-fan-out.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections import defaultdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydantic import SecretStr

from services.notifier.domain import idempotency_key
from shared.config import KafkaSettings
from shared.events import (
    CloudEvent,
    DeliveryChannel,
    EoData,
    EventType,
    Language,
    ProcedureData,
    ProcedureState,
    Scenario,
    Scope,
)
from shared.kafka import Publisher, ensure_topics
from shared.signing import IDEMPOTENCY_HEADER, SIGNATURE_HEADER, verify
from tests.support import (
    BUREAU,
    BUREAU_TOKEN,
    ChaosReport,
    ReceivedWebhook,
    WebhookReceiver,
    free_port,
    wait_for,
)

pytestmark = pytest.mark.e2e

EOS = 2000


def _eori(n: int) -> str:
    return f"LU{n:012d}"


async def _publish(settings: KafkaSettings, topic: str, events: list[CloudEvent[Any]]) -> None:
    await ensure_topics(settings)
    publisher = Publisher(settings, client_id="crash-test")
    await publisher.start()
    try:
        for start in range(0, len(events), 500):
            chunk = events[start:start + 500]
            await asyncio.gather(*(publisher.publish(topic, e, key=e.subject) for e in chunk))
    finally:
        await publisher.stop()


def _ready(port: int) -> bool:
    try:
        return httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def _start(config: Path, log: Path) -> subprocess.Popen[bytes]:
    script = Path(sys.executable).with_name("luccs-fallback")
    command = [str(script)] if script.exists() else [sys.executable, "-m", "services.cli"]
    with log.open("ab") as out:
        return subprocess.Popen([*command, "notifier", "--config", str(config)], stdout=out, stderr=subprocess.STDOUT)


def notifier_config(
    directory: Path, *, kafka_bootstrap: str, topic_prefix: str, port: int, instance_id: str, extra: str = "",
    kafka_extra: str = "",
) -> Path:
    """The config file of a notifier sending to loopback webhooks quickly (``extra``: more [notifier] lines,
    ``kafka_extra``: more [kafka] lines)."""
    config = directory / f"{instance_id}.toml"
    config.write_text(
        f"""
data_dir = "{directory / f'data-{instance_id}'}"
[logging]
level = "INFO"
[kafka]
bootstrap_servers = "{kafka_bootstrap}"
topic_prefix = "{topic_prefix}"
{kafka_extra}
[api]
bureau_tokens = ["{BUREAU_TOKEN}"]
[notifier]
port = {port}
instance_id = "{instance_id}"
allow_insecure_webhooks = true
allow_private_webhooks = true
per_host_concurrency = 4
backoff_base_s = 0.2
backoff_max_s = 1
{extra}
""",
        encoding="utf-8",
    )
    return config


def eo_events(receiver: WebhookReceiver, count: int) -> list[CloudEvent[EoData]]:
    """``count`` EO registrations whose webhooks point at ``receiver`` (``/hook/<EORI>``), secret ``secret-<n>``."""
    return [
        CloudEvent[EoData](
            source="/tests", type=EventType.EO_UPSERTED, subject=_eori(n),
            data=EoData(eori=_eori(n), name=f"EO {n}", language=list(Language)[n % 3],
                        webhook_url=receiver.url(f"/hook/{_eori(n)}"), webhook_secret=SecretStr(f"secret-{n}")),
        )
        for n in range(count)
    ]


def national_opening(procedure_id: str) -> CloudEvent[ProcedureData]:
    """A national ADA B2G procedure opened: the notice every EO must get."""
    return CloudEvent[ProcedureData](
        source="/tests", type=EventType.PROCEDURE_OPENED, subject=procedure_id,
        data=ProcedureData(procedure_id=procedure_id, scenario=Scenario.ADA_B2G_UNAVAILABLE, scope=Scope.NATIONAL,
                           state=ProcedureState.OPEN, reason="crash test", opened_at=datetime.now(UTC)),
    )


def hooks_by_eori(receiver: WebhookReceiver) -> dict[str, list[ReceivedWebhook]]:
    by_eori: dict[str, list[ReceivedWebhook]] = defaultdict(list)
    for hook in list(receiver.received):
        by_eori[hook.path.rsplit("/", 1)[1]].append(hook)
    return by_eori


def assert_copies_keyed_and_signed(by_eori: dict[str, list[ReceivedWebhook]], opened: CloudEvent[Any]) -> None:
    """Every copy of an EO's notice, before and after a crash, carries the one key of (event, EO, channel) and
    the EO's signature."""
    for eori, hooks in by_eori.items():
        assert {h.headers[IDEMPOTENCY_HEADER] for h in hooks} == {
            idempotency_key(opened.id, eori, DeliveryChannel.WEBHOOK)
        }
        n = int(eori[2:])
        assert all(verify(f"secret-{n}", h.body, h.headers[SIGNATURE_HEADER], now=int(time.time())) for h in hooks)


def test_sigkill_mid_fanout_then_restart_reaches_every_eo_once_keyed(
    kafka_bootstrap: str, tmp_path: Path, topic_prefix: str, chaos: ChaosReport
) -> None:
    receiver = WebhookReceiver(delay_s=0.02).start()
    kafka = KafkaSettings(bootstrap_servers=kafka_bootstrap, topic_prefix=topic_prefix)
    port = free_port()
    config = notifier_config(tmp_path, kafka_bootstrap=kafka_bootstrap, topic_prefix=topic_prefix, port=port,
                             instance_id="crash-test")
    eos = eo_events(receiver, EOS)
    asyncio.run(_publish(kafka, kafka.eos_topic, eos))
    procedure_id = "crash-proc-1"
    opened = national_opening(procedure_id)
    log = tmp_path / "notifier.log"
    process = _start(config, log)
    try:
        wait_for(lambda: _ready(port), timeout=90, interval=0.2, what="the notifier to read the EO registry")
        asyncio.run(_publish(kafka, kafka.procedures_topic, [opened]))
        wait_for(lambda: len(receiver.received) >= 300, timeout=60, what="the fan-out to be under way")
        os.kill(process.pid, signal.SIGKILL)
        process.wait(timeout=10)
        at_kill = len(receiver.received)
        assert at_kill < EOS, "the fan-out finished before the kill: slow the receiver down"

        process = _start(config, log)
        wait_for(lambda: _ready(port), timeout=90, interval=0.2, what="the restarted notifier")

        def every_eo_reached() -> bool:
            return len({hook.path for hook in list(receiver.received)}) >= EOS

        wait_for(every_eo_reached, timeout=120, interval=0.2, what=f"all {EOS} EOs to be reached")
        deliveries: list[dict[str, Any]] = []
        params: dict[str, Any] = {"procedure_id": procedure_id, "limit": 1000}
        for _ in range(10):
            page = httpx.get(f"http://127.0.0.1:{port}/api/v1/deliveries", params=params, headers=BUREAU,
                             timeout=10).json()
            deliveries += page["items"]
            if not page["next"]:
                break
            params["cursor"] = page["next"]

        def all_recorded() -> bool:
            items = httpx.get(f"http://127.0.0.1:{port}/api/v1/deliveries",
                              params={"procedure_id": procedure_id, "status": "delivered", "limit": 1},
                              headers=BUREAU, timeout=10)
            return bool(items.json()["items"]) and _count_delivered(port, procedure_id) == EOS

        wait_for(all_recorded, timeout=60, interval=0.5, what="every delivery recorded as delivered")
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
        receiver.stop()

    by_eori = hooks_by_eori(receiver)
    assert sorted(by_eori) == [_eori(n) for n in range(EOS)]
    duplicates = sum(len(hooks) - 1 for hooks in by_eori.values())
    chaos.add(faults=1, messages=len(receiver.received), losses=EOS - len(by_eori), duplicates=duplicates,
              detail=f"SIGKILL of the notifier mid fan-out to {EOS} EOs after {at_kill} webhooks; "
                     "the copies sent again carry the same Idempotency-Key")
    assert_copies_keyed_and_signed(by_eori, opened)
    # Only what was in flight (or sent but not yet recorded) at the kill is sent again, not the whole fan-out.
    assert duplicates < at_kill
    assert len({d["delivery_id"] for d in deliveries}) == EOS


def _count_delivered(port: int, procedure_id: str, status: str = "delivered") -> int:
    total = 0
    params: dict[str, Any] = {"procedure_id": procedure_id, "status": status, "limit": 1000}
    for _ in range(10):
        page = httpx.get(f"http://127.0.0.1:{port}/api/v1/deliveries", params=params, headers=BUREAU, timeout=10).json()
        total += len(page["items"])
        if not page["next"]:
            break
        params["cursor"] = page["next"]
    return total
