"""deploy/observability: the alert rules pass promtool (syntax and their own unit tests), and every series
a rule or a dashboard panel names is exposed on /metrics by the running services (real broker)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import shutil
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
import uvicorn
import yaml
from fastapi import FastAPI
from prometheus_client.parser import text_string_to_metric_families

from services.notifier.app import create_app as create_notifier
from services.procedure.app import create_app as create_procedure
from shared.config import KafkaSettings, Settings
from tests.support import free_port

pytestmark = pytest.mark.integration

OBSERVABILITY = Path(__file__).resolve().parents[2] / "deploy" / "observability"
RULES = OBSERVABILITY / "luccs-alerts.yml"
DASHBOARD = OBSERVABILITY / "grafana-dashboard.json"
_SERIES = re.compile(r"\b(luccs_[a-z0-9_]+)\b")
_SUFFIXES = ("", "_total", "_bucket", "_count", "_sum", "_created")


def _promtool(*args: str) -> subprocess.CompletedProcess[str]:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.fail("promtool is missing: scripts/bootstrap.sh installs it (Debian package 'prometheus') for "
                    "the full test run")
    return subprocess.run([promtool, *args], cwd=OBSERVABILITY, capture_output=True, text=True, timeout=60)


def test_alert_rules_and_the_example_configuration_pass_promtool() -> None:
    for args in (["check", "rules", RULES.name], ["test", "rules", "luccs-alerts.test.yml"],
                 ["check", "config", "prometheus.yml"]):
        done = _promtool(*args)
        assert done.returncode == 0, f"promtool {' '.join(args)}:\n{done.stdout}\n{done.stderr}"


def _named_series() -> dict[str, set[str]]:
    """Every luccs_* series named by an alert expression or a dashboard query, with who names it."""
    named: dict[str, set[str]] = {}
    for group in yaml.safe_load(RULES.read_text())["groups"]:
        for rule in group["rules"]:
            for name in _SERIES.findall(rule["expr"]):
                named.setdefault(name, set()).add(f"alert {rule['alert']}")
    for panel in json.loads(DASHBOARD.read_text())["panels"]:
        assert panel["targets"], f"dashboard panel {panel['title']!r} has no query"
        for target in panel["targets"]:
            for name in _SERIES.findall(target["expr"]):
                named.setdefault(name, set()).add(f"panel {panel['title']!r}")
    return named


@contextlib.asynccontextmanager
async def _serving(app: FastAPI) -> AsyncIterator[str]:
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_config=None))
    task = asyncio.create_task(server.serve())
    try:
        async with asyncio.timeout(60):
            while not server.started:
                if task.done():
                    task.result()
                await asyncio.sleep(0.05)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await task


async def test_every_series_of_the_rules_and_the_dashboard_is_exposed(
    tmp_path: Path, kafka_bootstrap: str, topic_prefix: str
) -> None:
    named = _named_series()
    assert {"luccs_component_state", "luccs_procedures_active", "luccs_procedure_decisions_total",
            "luccs_eo_endpoints_down", "luccs_fanout_deliveries"} <= set(named)
    settings = Settings(data_dir=tmp_path, kafka=KafkaSettings(bootstrap_servers=kafka_bootstrap,
                                                               topic_prefix=topic_prefix))
    exposed: set[str] = set()
    async with (_serving(create_procedure(settings)) as procedure, _serving(create_notifier(settings)) as notifier,
                httpx.AsyncClient(timeout=10) as client):
        for base in (procedure, notifier):
            response = await client.get(f"{base}/metrics")
            assert response.status_code == 200
            for family in text_string_to_metric_families(response.text):
                exposed |= {family.name + suffix for suffix in _SUFFIXES}
                exposed |= {sample.name for sample in family.samples}
    missing = {name: sorted(users) for name, users in named.items() if name not in exposed}
    assert not missing, f"series named but not exposed by any service: {missing}"
