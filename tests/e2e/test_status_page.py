"""The Servicedesk console in a real headless Chromium (Debian's), kept live by the server-sent-event stream:
over the real broker with a real notifier, an operator signs in, confirms a proposed procedure by clicking,
watches the notices reach every EO, closes it and sees the day's availability change; a wrong token is refused
in words and changes nothing; at 200 % zoom nothing of the main controls overflows sideways."""

from __future__ import annotations

import shutil
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.async_api import async_playwright, expect
from pydantic import SecretStr

from services.procedure.app import create_app
from shared.config import ApiSettings, KafkaSettings, ProcedureSettings, Settings
from shared.events import Component, ComponentState
from tests.console_system import running_console
from tests.support import serving

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
    async with serving(create_app(settings)) as client:
        yield str(client.base_url).rstrip("/")


async def test_page_shows_the_state_and_follows_changes_without_reload(base_url: str) -> None:
    async with async_playwright() as p:
        browser = await p.chromium.launch(executable_path=_chromium(), args=CHROMIUM_FLAGS)
        try:
            page = await browser.new_page()
            violations: list[str] = []
            page.on("console", lambda m: violations.append(m.text) if "Content Security Policy" in m.text else None)
            await page.goto(base_url + "/")
            await expect(page.locator("h1")).to_contain_text("Servicedesk console")
            await expect(page.locator("tr[data-component='ada_b2g'] .state")).to_have_text("unknown")
            await expect(page.locator("#no-procedures")).to_be_visible()
            await expect(page.locator("#live-status")).to_contain_text("Live", timeout=10_000)
            await expect(page.locator("button[data-action]")).to_have_count(0)  # read-only without a token

            async with httpx.AsyncClient(base_url=base_url) as client:
                declared = await client.post(
                    "/api/v1/procedures", headers={"Authorization": f"Bearer {TOKEN}"},
                    json={"scenario": "LUCCS_UNAVAILABLE", "reason": "Exercise of the exception procedure"},
                )
            procedure_id = declared.json()["procedure_id"]
            # No reload: the stream tells the page, which re-renders its live part.
            card = page.locator(f"article[data-procedure='{procedure_id}']")
            await expect(card).to_contain_text("Scenario 3", timeout=10_000)
            await expect(card).to_contain_text("Exercise of the exception procedure")
            await expect(page.locator("#no-procedures")).to_have_count(0)
            await page.click("a[hreflang='de']")
            await expect(card).to_contain_text("Szenario 3", timeout=10_000)
            assert violations == []  # the page's own script and style run under its strict policy
        finally:
            await browser.close()


async def _texts(locator: Any) -> list[str]:
    return [t.strip() for t in await locator.all_inner_texts()]


async def test_an_operator_confirms_watches_the_fan_out_and_closes_from_the_console(
    tmp_path: Path, kafka_bootstrap: str, topic_prefix: str,
) -> None:
    async with running_console(data_dir=tmp_path, kafka_bootstrap=kafka_bootstrap, topic_prefix=topic_prefix,
                               operator_token=TOKEN, eos=3) as system, async_playwright() as p:
        await system.observe(Component.ADA_B2G, ComponentState.UP, latency_ms=80)
        await system.observe(Component.NTP, ComponentState.UP, latency_ms=60)
        browser = await p.chromium.launch(executable_path=_chromium(), args=CHROMIUM_FLAGS)
        try:
            page = await browser.new_page()
            violations: list[str] = []
            page.on("console", lambda m: violations.append(m.text) if "Content Security Policy" in m.text else None)
            await page.goto(system.url + "/")
            await expect(page.locator("#live-status")).to_contain_text("Live", timeout=10_000)
            today = page.locator("[data-bar='ada_b2g'] .cell").last
            await expect(page.locator("tr[data-component='ada_b2g'] .state")).to_have_attribute(
                "data-state", "up", timeout=15_000)
            await page.reload()
            await expect(today).to_have_attribute("data-level", "full")
            await expect(today).to_have_attribute("data-outages", "0")

            await system.observe(Component.ADA_B2G, ComponentState.DOWN, latency_ms=2000)
            proposed = page.locator("article.procedure[data-state='proposed']")
            await expect(proposed).to_contain_text("Scenario 2", timeout=15_000)
            procedure_id = await proposed.get_attribute("data-procedure")
            assert procedure_id
            await expect(page.locator("button[data-action]")).to_have_count(0)  # not signed in: read-only

            # A wrong token: refused in words, nothing changes, still read-only.
            await page.fill("#token", "not-the-operator-token")
            await page.click("#sign-in button[type=submit]")
            await expect(page.locator("#sign-in-error")).to_contain_text("Refused:")
            await expect(page.locator("#sign-in-error")).to_contain_text("token")
            await expect(page.locator("button[data-action]")).to_have_count(0)
            await expect(page.locator("#read-only")).to_be_visible()
            assert await page.evaluate("() => sessionStorage.length") == 0
            async with httpx.AsyncClient(base_url=system.url) as client:
                still = (await client.get(f"/api/v1/procedures/{procedure_id}")).json()
            assert still["state"] == "proposed"

            await page.fill("#token", TOKEN)
            await page.click("#sign-in button[type=submit]")
            await expect(page.locator("#who-name")).to_contain_text("operator:")
            await expect(page.locator("#sign-in")).to_be_hidden()
            await expect(page.locator("#read-only")).to_be_hidden()
            assert await page.evaluate("() => document.cookie") == ""
            assert TOKEN not in page.url
            card = page.locator(f"article[data-procedure='{procedure_id}']")
            await card.locator("button[data-action='confirm']").click()
            await expect(page.locator("#act")).to_be_visible()
            await expect(page.locator("#act-question")).to_contain_text("Confirm this proposed procedure")
            await page.click("#act-yes")  # no reason given: the API's words are shown, nothing confirmed
            await expect(page.locator("#act-error")).to_contain_text("reason")
            await page.fill("#act textarea[name=reason]", "ADA AS4 gateway down, confirmed by phone")
            await page.click("#act-yes")
            await expect(page.locator("#act")).to_be_hidden()
            await expect(card).to_have_attribute("data-state", "open", timeout=15_000)
            counter = card.locator(".fanout .count")
            await expect(counter).to_have_attribute("data-concerned", "3", timeout=20_000)
            await expect(counter).to_have_attribute("data-reached", "3", timeout=20_000)
            await expect(counter).to_have_text("3 of 3")
            await expect(card.locator(".timeline")).to_contain_text("ADA AS4 gateway down, confirmed by phone")
            reached = {w.path for w in system.receiver.of_type("luccs.procedure.opened")}
            assert reached == {f"/hooks/{eori}" for eori in system.eoris}

            await card.locator("button[data-action='close']").click()
            await expect(page.locator("#act-question")).to_contain_text("Close this procedure")
            await page.fill("#act textarea[name=reason]", "Gateway restarted")
            await page.click("#act-yes")
            await expect(card).to_have_count(0, timeout=15_000)
            # ADA B2G is still down: the service proposes again; the operator withdraws that proposal.
            again = page.locator(f"article.procedure[data-state='proposed']:not([data-procedure='{procedure_id}'])")
            await expect(again).to_have_count(1, timeout=15_000)
            second_id = await again.get_attribute("data-procedure")
            await again.locator("button[data-action='withdraw']").click()
            await expect(page.locator("#act-question")).to_contain_text("Withdraw this proposed procedure")
            await page.fill("#act textarea[name=reason]", "Known: the gateway is being restarted")
            await page.click("#act-yes")
            await expect(page.locator(f"article[data-procedure='{second_id}']")).to_have_count(0, timeout=15_000)
            async with httpx.AsyncClient(base_url=system.url) as client:
                withdrawn = (await client.get(f"/api/v1/procedures/{second_id}")).json()
            assert [e["kind"] for e in withdrawn["timeline"]] == ["propose", "withdraw"]
            await system.observe(Component.ADA_B2G, ComponentState.UP, latency_ms=90)
            await expect(page.locator("tr[data-component='ada_b2g'] .state")).to_have_attribute(
                "data-state", "up", timeout=15_000)
            await expect(page.locator("#no-procedures")).to_be_visible(timeout=15_000)
            await expect(today).to_have_attribute("data-outages", "1")
            assert await today.get_attribute("data-level") in ("high", "fair", "low")
            await today.focus()
            await expect(today.locator(".tip")).to_be_visible()
            await expect(today.locator(".tip")).to_contain_text("1 outages")
            async with httpx.AsyncClient(base_url=system.url) as client:
                closed = (await client.get(f"/api/v1/procedures/{procedure_id}")).json()
            assert closed["state"] == "closed"
            assert [e["kind"] for e in closed["timeline"]] == ["propose", "confirm", "close"]
            assert violations == []
        finally:
            await browser.close()


async def test_an_operator_declares_annotates_and_broadcasts_with_errors_in_words(base_url: str) -> None:
    async with async_playwright() as p:
        browser = await p.chromium.launch(executable_path=_chromium(), args=CHROMIUM_FLAGS)
        try:
            page = await browser.new_page()
            await page.goto(base_url + "/?lang=fr")
            await page.fill("#token", TOKEN)
            await page.click("#sign-in button[type=submit]")
            await expect(page.locator("#who-name")).to_contain_text("operator:")

            await page.click("button[data-action='declare']")
            await expect(page.locator("#act-question")).to_contain_text("Déclarer cette procédure")
            await page.select_option("#act select[name=scenario]", "ADA_B2G_UNAVAILABLE")
            await page.fill("#act textarea[name=reason]", "Exercice")
            await page.click("#act-yes")
            card = page.locator("article.procedure[data-state='open']")
            await expect(card).to_contain_text("Scénario 2", timeout=10_000)
            await expect(card.locator(".fanout")).to_contain_text("indisponible")  # no notifier configured here

            await card.locator("button[data-action='note']").click()
            await page.fill("#act textarea[name=text]", "Appel du Bureau à 10 h")
            await page.click("#act-yes")
            await expect(card.locator(".timeline li[data-kind='note']")).to_contain_text("Appel du Bureau à 10 h",
                                                                                        timeout=10_000)

            await card.locator("button[data-action='broadcast']").click()
            await page.fill("#act textarea[name=text_fr]", "Déposez par NTP")
            await page.fill("#act textarea[name=text_en]", "Lodge through NTP")
            await page.click("#act-yes")  # no German text: the API's 422 in words, nothing sent
            await expect(page.locator("#act-error")).to_contain_text("missing in de")
            await page.fill("#act textarea[name=text_de]", "Über NTP anmelden")
            await page.click("#act-yes")
            await expect(page.locator("#act")).to_be_hidden()
            await expect(card.locator(".timeline li[data-kind='broadcast']")).to_have_count(1, timeout=10_000)
            await expect(card.locator(".timeline li[data-kind='broadcast']")).to_contain_text("message diffusé")
        finally:
            await browser.close()


async def test_at_200_percent_zoom_the_main_controls_do_not_overflow(base_url: str) -> None:
    async with async_playwright() as p:
        browser = await p.chromium.launch(executable_path=_chromium(), args=CHROMIUM_FLAGS)
        try:
            # A 1280 x 800 laptop screen at 200 %: 640 x 400 CSS pixels, drawn at twice the density.
            page = await browser.new_page(viewport={"width": 640, "height": 400}, device_scale_factor=2)
            async with httpx.AsyncClient(base_url=base_url) as client:
                await client.post("/api/v1/procedures", headers={"Authorization": f"Bearer {TOKEN}"},
                                  json={"scenario": "LUCCS_UNAVAILABLE", "reason": "A rather long reason " * 8})
            await page.goto(base_url + "/")
            await page.fill("#token", TOKEN)
            await page.click("#sign-in button[type=submit]")
            await expect(page.locator("button[data-action='close']")).to_be_visible(timeout=10_000)
            overflow = await page.evaluate("() => document.documentElement.scrollWidth - window.innerWidth")
            assert overflow <= 0, f"the page scrolls sideways by {overflow}px"
            controls = page.locator("button, input, nav.lang a, .bar, svg, progress")
            for index in range(await controls.count()):
                control = controls.nth(index)
                box = await control.bounding_box()
                if box is None:  # hidden
                    continue
                assert box["x"] >= 0 and box["x"] + box["width"] <= 640 + 0.5, await control.evaluate(
                    "e => e.outerHTML.slice(0, 120)")
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
    assert html.count('class="cell l-') == 2 * 90  # the availability bars are drawn by the server


async def test_signing_out_of_a_closed_console_leaves_nothing_on_screen(
    tmp_path: Path, kafka_bootstrap: str, topic_prefix: str
) -> None:
    settings = Settings(
        data_dir=tmp_path,
        kafka=KafkaSettings(bootstrap_servers=kafka_bootstrap, topic_prefix=topic_prefix),
        api=ApiSettings(operator_tokens=[SecretStr(TOKEN)], read_requires_token=True),
        procedure=ProcedureSettings(notifier_url=None),
    )
    async with serving(create_app(settings)) as client, async_playwright() as p:
        browser = await p.chromium.launch(executable_path=_chromium(), args=CHROMIUM_FLAGS)
        try:
            page = await browser.new_page()
            await page.goto(str(client.base_url.join("/?lang=en")))
            live = page.locator("#live")
            await expect(live.locator("button[data-action='declare']")).to_have_count(0)  # nothing without a token
            await page.fill("#token", TOKEN)
            await page.click("#sign-in button[type=submit]")
            await expect(page.locator("#who-name")).to_contain_text("operator:")
            await expect(live.locator("button[data-action='declare']")).to_have_count(1)

            await page.click("#sign-out")
            await expect(page.locator("#sign-in")).to_be_visible()
            await expect(page.locator("#signed-in")).to_be_hidden()
            await expect(live).to_be_empty()
            assert await page.evaluate("sessionStorage.length") == 0

            await page.fill("#token", TOKEN)  # and one can sign in again without reloading
            await page.click("#sign-in button[type=submit]")
            await expect(live.locator("button[data-action='declare']")).to_have_count(1)
        finally:
            await browser.close()
