"""The EOs' public page in a real headless Chromium (Debian's), in French, English and German: it renders under
its strict Content-Security-Policy with no violation, and the browser's language choice is followed."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from playwright.async_api import ConsoleMessage, async_playwright, expect
from pydantic import SecretStr

from services.procedure.app import create_app
from services.procedure.public_texts import PHRASES
from shared.config import ApiSettings, KafkaSettings, ProcedureSettings, Settings
from shared.events import Language
from tests.e2e.test_status_page import CHROMIUM_FLAGS, _chromium
from tests.support import serving

pytestmark = pytest.mark.e2e

TOKEN = "public-page-operator-token"


@pytest.fixture
async def base_url(tmp_path: Path, kafka_bootstrap: str, topic_prefix: str) -> AsyncIterator[str]:
    settings = Settings(
        data_dir=tmp_path,
        kafka=KafkaSettings(bootstrap_servers=kafka_bootstrap, topic_prefix=topic_prefix),
        api=ApiSettings(operator_tokens=[SecretStr(TOKEN)]),
        procedure=ProcedureSettings(notifier_url=None),
    )
    async with serving(create_app(settings)) as client:
        yield str(client.base_url).rstrip("/")


async def test_the_public_page_renders_in_each_language_under_its_policy(base_url: str) -> None:
    async with httpx.AsyncClient(base_url=base_url) as client:
        declared = await client.post("/api/v1/procedures", headers={"Authorization": f"Bearer {TOKEN}"},
                                     json={"scenario": "LUCCS_UNAVAILABLE", "reason": "reason-never-public-e2e"})
        assert declared.status_code == 201, declared.text
    async with async_playwright() as p:
        browser = await p.chromium.launch(executable_path=_chromium(), args=CHROMIUM_FLAGS)
        violations: list[str] = []

        def watch(message: ConsoleMessage) -> None:
            if "Content Security Policy" in message.text:
                violations.append(message.text)

        try:
            for language in Language:
                t = PHRASES[language]
                page = await browser.new_page()
                page.on("console", watch)
                response = await page.goto(f"{base_url}/public?lang={language.value}")
                assert response is not None and response.status == 200
                policy = await response.header_value("content-security-policy")
                assert policy is not None and "default-src 'none'" in policy and "script-src 'none'" in policy
                await expect(page.locator("html")).to_have_attribute("lang", language.value)
                await expect(page.locator("h1")).to_have_text(t["title"])
                await expect(page.locator("#advice")).to_have_text(t["advice_contact_bureau"])
                await expect(page.locator("#in-force")).to_contain_text(t["scenario_LUCCS_UNAVAILABLE"])
                await expect(page.locator("tr[data-component='ntp'] .state")).to_have_text(t["state_down"])
                # The page's own style applied (allowed by its hash), not blocked.
                border = await page.locator("#advice").evaluate("e => getComputedStyle(e).borderLeftStyle")
                assert border == "solid"
                assert "reason-never-public-e2e" not in await page.content()
                assert violations == [], violations
                await page.close()

            context = await browser.new_context(locale="de-DE")
            page = await context.new_page()
            await page.goto(f"{base_url}/public")
            await expect(page.locator("html")).to_have_attribute("lang", "de")
            await page.get_by_role("link", name=PHRASES[Language.EN]["lang_name"]).click()
            await expect(page.locator("h1")).to_have_text(PHRASES[Language.EN]["title"])
            await context.close()
        finally:
            await browser.close()
