"""Two notifiers on one PostgreSQL database and the real broker; one is SIGKILLed in the middle of a 2,000-EO
fan-out and stays dead: the other sends what the dead one had claimed once its claim lease has run out.
Every EO is reached, a notice sent twice carries the same Idempotency-Key, no delivery is dead.

Both run as a user runs them (``luccs-fallback notifier --config FILE``); the EOs' webhooks point at one
loopback receiver slow enough for the kill to land mid fan-out, and the test checks in the database that
the killed notifier still held undelivered claims when it died.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import time
from functools import partial
from pathlib import Path

import pytest
from sqlalchemy import func, select
from sqlalchemy.engine import make_url

from services.notifier.models import DeliveryRow
from shared.config import KafkaSettings
from shared.db import make_engine, session_factory
from tests.integration.test_notifier_crash import (
    _count_delivered,
    _eori,
    _publish,
    _ready,
    _start,
    assert_copies_keyed_and_signed,
    eo_events,
    hooks_by_eori,
    national_opening,
    notifier_config,
)
from tests.support import ChaosReport, WebhookReceiver, free_port, pg_admin, wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.postgres]

EOS = 2000
CLAIM_LEASE_S = 3.0
_DUE = ("pending", "retrying")


async def _claims(database_url: str) -> dict[str, int]:
    """Undelivered deliveries per notifier holding a claim on them."""
    engine = make_engine(database_url)
    try:
        async with session_factory(engine)() as session:
            rows = (await session.execute(
                select(DeliveryRow.claimed_by, func.count()).where(
                    DeliveryRow.claimed_by.is_not(None), DeliveryRow.status.in_(_DUE)
                ).group_by(DeliveryRow.claimed_by)
            )).all()
        return {str(owner): int(count) for owner, count in rows}
    finally:
        await engine.dispose()


def test_two_notifiers_one_sigkilled_mid_fanout_the_other_reaches_every_eo(
    kafka_bootstrap: str, postgres_url: str, tmp_path: Path, topic_prefix: str, chaos: ChaosReport
) -> None:
    database = f"luccs_notifiers_{os.getpid()}_{int(time.time())}"
    asyncio.run(pg_admin(postgres_url, f'CREATE DATABASE "{database}"'))
    database_url = make_url(postgres_url).set(database=database).render_as_string(hide_password=False)
    receiver = WebhookReceiver(delay_s=0.02).start()
    kafka = KafkaSettings(bootstrap_servers=kafka_bootstrap, topic_prefix=topic_prefix)
    ports = {name: free_port() for name in ("notifier-0", "notifier-1")}
    extra = f'database_url = "{database_url}"\nclaim_lease_s = {CLAIM_LEASE_S}\nescalate_after_s = 3600'
    processes: dict[str, subprocess.Popen[bytes]] = {}
    try:
        asyncio.run(_publish(kafka, kafka.eos_topic, eo_events(receiver, EOS)))
        for name, port in ports.items():
            config = notifier_config(tmp_path, kafka_bootstrap=kafka_bootstrap, topic_prefix=topic_prefix,
                                     port=port, instance_id=name, extra=extra)
            processes[name] = _start(config, tmp_path / f"{name}.log")
            # One at a time: the second applies no migration the first is applying.
            wait_for(partial(_ready, port), timeout=90, interval=0.2, what=f"{name} to read the EO registry")
        opened = national_opening("two-notifiers-1")
        asyncio.run(_publish(kafka, kafka.procedures_topic, [opened]))

        def both_sending() -> dict[str, int] | None:
            claims = asyncio.run(_claims(database_url))
            return claims if len(receiver.received) >= 300 and len(claims) == 2 else None

        claims = wait_for(both_sending, timeout=60, interval=0.2, what="both notifiers sending the fan-out")
        victim = max(claims, key=lambda name: claims[name])
        survivor = next(name for name in ports if name != victim)
        os.kill(processes[victim].pid, signal.SIGKILL)
        killed = time.monotonic()
        processes[victim].wait(timeout=10)
        at_kill = len(receiver.received)
        orphaned = asyncio.run(_claims(database_url)).get(victim, 0)
        assert orphaned > 0, "the killed notifier held no undelivered claim: the kill missed the fan-out"

        wait_for(lambda: len(hooks_by_eori(receiver)) >= EOS, timeout=90, interval=0.2,
                 what=f"all {EOS} EOs to be reached")
        reached_all_s = time.monotonic() - killed
        port = ports[survivor]
        wait_for(lambda: _count_delivered(port, opened.data.procedure_id) == EOS, timeout=60, interval=0.5,
                 what="every delivery recorded as delivered")
        dead = _count_delivered(port, opened.data.procedure_id, status="dead")
    finally:
        for process in processes.values():
            if process.poll() is None:
                process.terminate()
                try:
                    process.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    process.kill()
        receiver.stop()
        asyncio.run(pg_admin(postgres_url, f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)'))

    by_eori = hooks_by_eori(receiver)
    duplicates = sum(len(hooks) - 1 for hooks in by_eori.values())
    chaos.add(faults=1, messages=len(receiver.received), losses=EOS - len(by_eori) + dead, duplicates=duplicates,
              detail=f"2 notifiers on one PostgreSQL database, {victim} SIGKILLed mid fan-out to {EOS} EOs after "
                     f"{at_kill} webhooks holding {orphaned} claims, not restarted: {survivor} reached every EO "
                     f"{reached_all_s:.1f}s after the kill (claim_lease_s={CLAIM_LEASE_S:g}); {dead} dead; "
                     "copies sent again carry the same Idempotency-Key")
    assert sorted(by_eori) == [_eori(n) for n in range(EOS)]
    assert dead == 0
    assert_copies_keyed_and_signed(by_eori, opened)
    # Only what the dead notifier had in flight (or sent but not yet recorded) is sent again.
    assert duplicates < at_kill
