"""The status page in a real headless Chromium (Debian's), kept live by the server-sent-event stream."""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
import uvicorn
from playwright.async_api import async_playwright, expect
from pydantic import SecretStr

from services.procedure.app import create_app
from shared.config import ApiSettings, KafkaSettings, ProcedureSettings, Settings
from tests.support import free_port

pytestmark = pytest.mark.e2e

TOKEN = "status-page-operator-token"
CHROMIUM_FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]


def _chromium() -> str:
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        pytest.fail("Debian's chromium is not installed: `make test` installs it (apt-get install chromium)")
    return path


@pytest.fixture
async def base_url(tmp_path: Path, kafka_bootstrap: str, topic_prefix: str) -> AsyncIterator[str]:
    settings = Settings(
        data_dir=tmp_path,
        kafka=KafkaSettings(bootstrap_servers=kafka_bootstrap, topic_prefix=topic_prefix),
        api=ApiSettings(operator_tokens=[SecretStr(TOKEN)]),
        procedure=ProcedureSettings(notifier_url=None),
    )
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(settings), host="127.0.0.1", port=port, log_config=None))
    task = asyncio.create_task(server.serve())
    async with asyncio.timeout(60):
        while not server.started:
            await asyncio.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    await task


async def test_page_shows_the_state_and_follows_changes_without_reload(base_url: str) -> None:
    async with async_playwright() as p:
        browser = await p.chromium.launch(executable_path=_chromium(), args=CHROMIUM_FLAGS)
        try:
            page = await browser.new_page()
            violations: list[str] = []
            page.on("console", lambda m: violations.append(m.text) if "Content Security Policy" in m.text else None)
            await page.goto(base_url + "/")
            await expect(page.locator("h1")).to_contain_text("fallback status")
            await expect(page.locator("tr[data-component='ada_b2g'] .state")).to_have_text("unknown")
            await expect(page.locator("#no-procedures")).to_be_visible()
            await expect(page.locator("#live-status")).to_contain_text("Live", timeout=10_000)

            async with httpx.AsyncClient(base_url=base_url) as client:
                declared = await client.post(
                    "/api/v1/procedures", headers={"Authorization": f"Bearer {TOKEN}"},
                    json={"scenario": "LUCCS_UNAVAILABLE", "reason": "Exercise of the exception procedure"},
                )
            procedure_id = declared.json()["procedure_id"]
            # No reload: the stream tells the page, which re-renders its live part.
            card = page.locator(f"article[data-procedure='{procedure_id}']")
            await expect(card).to_contain_text("LUCCS_UNAVAILABLE", timeout=10_000)
            await expect(card).to_contain_text("Exercise of the exception procedure")
            await expect(page.locator("#no-procedures")).to_have_count(0)
            assert violations == []  # the page's own script and style run under its strict policy
        finally:
            await browser.close()


async def test_the_page_sends_a_strict_policy_and_an_injected_script_does_not_run(base_url: str) -> None:
    async with httpx.AsyncClient(base_url=base_url) as client:
        response = await client.get("/")
    policy = response.headers["Content-Security-Policy"]
    assert "default-src 'none'" in policy and "frame-ancestors 'none'" in policy and "unsafe-inline" not in policy
    assert response.headers["Referrer-Policy"] == "no-referrer"
    async with async_playwright() as p:
        browser = await p.chromium.launch(executable_path=_chromium(), args=CHROMIUM_FLAGS)
        try:
            page = await browser.new_page()
            await page.goto(base_url + "/")
            # What an injection would add: an inline script the policy has no hash for.
            await page.evaluate("""() => {
                const s = document.createElement("script");
                s.textContent = "window.injected = true";
                document.body.appendChild(s);
            }""")
            assert await page.evaluate("() => window.injected === undefined")
        finally:
            await browser.close()


async def test_a_cross_origin_form_post_is_refused(base_url: str) -> None:
    # Another site's page posts a form to the operator API: a browser sends no Authorization header with it
    # (tokens never live in cookies), so the API refuses it and nothing is declared.
    async with async_playwright() as p:
        browser = await p.chromium.launch(executable_path=_chromium(), args=CHROMIUM_FLAGS)
        try:
            page = await browser.new_page()
            await page.set_content(
                f'<form id="f" method="post" action="{base_url}/api/v1/procedures">'
                '<input name="scenario" value="LUCCS_UNAVAILABLE"><input name="reason" value="forged"></form>'
            )
            async with page.expect_navigation() as navigation:
                await page.evaluate("() => document.getElementById('f').submit()")
            response = await navigation.value
            assert response is not None and response.status == 401
        finally:
            await browser.close()
    async with httpx.AsyncClient(base_url=base_url) as client:
        listed = await client.get("/api/v1/procedures", headers={"Authorization": f"Bearer {TOKEN}"})
    assert listed.json()["items"] == []


async def test_page_is_readable_without_javascript(base_url: str) -> None:
    async with httpx.AsyncClient(base_url=base_url) as client:
        html = (await client.get("/")).text
    assert "<script src" not in html  # no external assets
    assert "http://" not in html.split("<script>")[0] and "https://" not in html
    assert "ADA B2G (AS4)" in html
    assert "No fallback procedure is in force" in html
