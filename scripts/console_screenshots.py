"""Screenshots of the Servicedesk console during an outage and after it (PNG files), in one command:

    .venv/bin/python -m scripts.console_screenshots [--kafka 127.0.0.1:9092] [--out var/screenshots]

Needs a Kafka broker (``make run`` starts one on 127.0.0.1:9092; ``deploy/kafka/kafka.sh start`` alone does
too) and Debian's chromium. It starts the procedure service (confirm mode) and a real notifier in this process
on loopback ports, with a topic prefix and databases of its own (a temporary folder), registers three EOs,
fills 90 days of availability history and 24 hours of response times with made-up figures (so that the bars
and the chart have something to show), then takes ADA B2G down: the procedure is proposed, confirmed, its
notices reach the EOs; ADA B2G comes back and it closes. Files written: ``console-outage.png``,
``console-outage-200pct.png`` (a 1280 px wide screen at 200 % zoom) and ``console-after.png``.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import random
import secrets
import shutil
import sys
import tempfile
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
from playwright.async_api import Page, async_playwright, expect

from services.procedure.latency import SLOT, slot_start
from services.procedure.migrate import upgrade
from services.procedure.models import ComponentStateRow, ProbeLatencyRow
from shared.db import make_engine, session_factory
from shared.events import Component, ComponentState
from tests.console_system import ConsoleSystem, running_console
from tests.support import eventually

TOKEN = secrets.token_urlsafe(24)  # this run's operator token
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking"]
# Made-up past outages: (days ago, start hour, minutes, component).
PAST_OUTAGES = [(3, 9.5, 25, Component.ADA_B2G), (11, 14.0, 190, Component.ADA_B2G), (11, 15.0, 40, Component.NTP),
                (27, 2.0, 12, Component.NTP), (46, 10.25, 600, Component.ADA_B2G), (71, 16.0, 35, Component.ADA_B2G)]


async def _fill_history(database_url: str, *, now: datetime) -> None:
    """90 days of component state spans (up, but for ``PAST_OUTAGES``) and 24 hours of latency slots."""
    engine = make_engine(database_url)
    await upgrade(engine)
    sessions = session_factory(engine)
    start = (now - timedelta(days=90)).replace(hour=0, minute=0, second=0, microsecond=0)
    end = now - timedelta(minutes=1)
    async with sessions.begin() as session:
        for component in (Component.ADA_B2G, Component.NTP):
            downs = sorted(
                (now.replace(hour=0, minute=0, second=0, microsecond=0) - timedelta(days=days, hours=-hour),
                 timedelta(minutes=minutes))
                for days, hour, minutes, which in PAST_OUTAGES if which == component
            )
            moment = start
            for down_at, lasting in downs:
                session.add(ComponentStateRow(component=component.value, state=ComponentState.UP.value,
                                              since=moment, until=down_at))
                session.add(ComponentStateRow(component=component.value, state=ComponentState.DOWN.value,
                                              since=down_at, until=down_at + lasting))
                moment = down_at + lasting
            session.add(ComponentStateRow(component=component.value, state=ComponentState.UP.value, since=moment,
                                          until=end))
            base = 180.0 if component == Component.ADA_B2G else 95.0
            slot = slot_start(now - timedelta(hours=24))
            step, noise = 0, random.Random(component.value)
            while slot < slot_start(end):
                mean = base * (1 + 0.25 * math.sin(step / 288 * 2 * math.pi) + noise.uniform(-0.08, 0.08))
                session.add(ProbeLatencyRow(component=component.value, slot_start=slot, samples=10,
                                            total_ms=mean * 10, max_ms=mean * 1.6))
                slot += SLOT
                step += 1
    await engine.dispose()


async def _wait_until(predicate: Callable[[], Awaitable[bool]], what: str, timeout_s: float = 30) -> None:
    await eventually(predicate, timeout=timeout_s, interval=0.2, what=what)
    print(f"  {what}")


async def _sign_in(page: Page) -> None:
    await page.fill("#token", TOKEN)
    await page.click("#sign-in button[type=submit]")
    await expect(page.locator("#who-name")).to_contain_text("operator:")


async def _shoot(system: ConsoleSystem, out: Path, chromium: str) -> None:
    async with async_playwright() as p, httpx.AsyncClient(
        base_url=system.url, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=10
    ) as api:
        browser = await p.chromium.launch(executable_path=chromium, args=CHROMIUM_FLAGS)
        try:
            await system.observe(Component.ADA_B2G, ComponentState.UP, latency_ms=170)
            await system.observe(Component.NTP, ComponentState.UP, latency_ms=90)
            await system.observe(Component.ADA_B2G, ComponentState.DOWN, latency_ms=5000)

            async def proposed() -> bool:
                return bool((await api.get("/api/v1/procedures", params={"state": "proposed"})).json()["items"])

            await _wait_until(proposed, "ADA B2G down: procedure proposed")
            (procedure,) = (await api.get("/api/v1/procedures", params={"state": "proposed"})).json()["items"]
            procedure_id = procedure["procedure_id"]
            (await api.post(f"/api/v1/procedures/{procedure_id}/confirm",
                            json={"reason": "AS4 gateway down, confirmed with the ADA operations team"})
             ).raise_for_status()
            (await api.post(f"/api/v1/procedures/{procedure_id}/notes",
                            json={"text": "Operations expect the gateway back within the hour"})).raise_for_status()

            async def everyone_reached() -> bool:
                fanout = (await api.get(f"/api/v1/procedures/{procedure_id}/fanout")).json()
                return bool(fanout.get("concerned")) and fanout["reached"] == fanout["concerned"]

            await _wait_until(everyone_reached, "confirmed: every EO reached")
            page = await browser.new_page(viewport={"width": 1280, "height": 1000})
            await page.goto(system.url + "/")
            await _sign_in(page)
            await expect(page.locator(".fanout .count")).to_contain_text("3 of 3")
            await page.screenshot(path=out / "console-outage.png", full_page=True)
            zoomed = await browser.new_page(viewport={"width": 640, "height": 500}, device_scale_factor=2)
            await zoomed.goto(system.url + "/")
            await _sign_in(zoomed)
            await zoomed.screenshot(path=out / "console-outage-200pct.png", full_page=True)

            await system.observe(Component.ADA_B2G, ComponentState.UP, latency_ms=160)
            await expect(page.locator("#no-procedures")).to_be_visible(timeout=30_000)
            print("  ADA B2G back: procedure closed")
            await page.screenshot(path=out / "console-after.png", full_page=True)
        finally:
            await browser.close()


async def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--kafka", default=os.environ.get("LUCCS_TEST_KAFKA", "127.0.0.1:9092"),
                        help="Kafka bootstrap servers (default $LUCCS_TEST_KAFKA, else 127.0.0.1:9092)")
    parser.add_argument("--out", type=Path, default=Path("var/screenshots"), help="where the PNGs go")
    args = parser.parse_args(argv)
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        print("console_screenshots: Debian's chromium is not installed (apt-get install chromium)", file=sys.stderr)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="luccs-console-") as folder:
        data_dir = Path(folder)
        await _fill_history(f"sqlite+aiosqlite:///{data_dir / 'procedure.db'}", now=datetime.now(UTC))
        async with running_console(data_dir=data_dir, kafka_bootstrap=args.kafka,
                                   topic_prefix=f"screenshots-{uuid.uuid4().hex[:8]}", operator_token=TOKEN) as system:
            await _shoot(system, args.out, chromium)
    for name in ("console-outage.png", "console-outage-200pct.png", "console-after.png"):
        print(args.out / name)
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
