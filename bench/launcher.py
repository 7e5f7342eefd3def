"""What the end-to-end benchmarks share: the simulator and the three services started as processes (as a
user would) on free loopback ports against a real broker, a webhook receiver in this process for the EOs,
and bounded waits on what the services answer.

    async with running_pipeline(bootstrap=..., prefix=..., detector_settings={"interval_s": 1}) as pipeline:
        await pipeline.register_eo("LU1", path="/bench")
        await wait_status(pipeline.client, pipeline.status_url, {"ada_b2g": "up", "ntp": "up"})
        await pipeline.client.post(f"{pipeline.control}/ada-as4/refuse")
"""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import httpx

from bench import checkout_env, luccs_fallback
from tests.support import WebhookReceiver, free_port

__all__ = ["SECRET", "TOKEN", "Pipeline", "running_pipeline", "wait_for", "wait_http", "wait_status"]

TOKEN = "bench-operator-token"
SECRET = "bench-webhook-secret-0123456789"
SERVICES = ("detector", "procedure", "notifier")


@dataclass
class Pipeline:
    """The running processes' addresses, the EOs' webhook receiver and an HTTP client to drive them."""

    ports: dict[str, int]
    receiver: WebhookReceiver
    client: httpx.AsyncClient

    def url(self, service: str) -> str:
        return f"http://127.0.0.1:{self.ports[service]}"

    @property
    def control(self) -> str:
        """The simulator's control API: ``POST {control}/<endpoint>/refuse|ok``."""
        return f"{self.url('control')}/control"

    @property
    def status_url(self) -> str:
        return f"{self.url('procedure')}/api/v1/status"

    async def register_eo(self, eori: str, *, name: str, path: str) -> None:
        """Register an EO (English notices) whose webhook is the receiver's ``path``."""
        created = await self.client.post(
            f"{self.url('procedure')}/api/v1/eos", headers={"Authorization": f"Bearer {TOKEN}"},
            json={"eori": eori, "name": name, "language": "en", "webhook_url": self.receiver.url(path),
                  "webhook_secret": SECRET})
        created.raise_for_status()


def _toml(settings: Mapping[str, float | int | str]) -> str:
    return "".join(f"{key} = {value!r}\n" if isinstance(value, str) else f"{key} = {value}\n"
                   for key, value in settings.items())


def _config(tmp: Path, *, bootstrap: str, prefix: str, ports: dict[str, int],
            detector_settings: Mapping[str, float | int | str], procedure_settings: Mapping[str, float | int | str],
            procedure_reads_notifier: bool) -> Path:
    """Two targets (ADA AS4 by the ``as4`` probe, NTP by ``http``) on the simulator, no EO targets; the
    rest of the detection settings the defaults unless given."""
    procedure = dict(procedure_settings)
    if procedure_reads_notifier:
        procedure["notifier_url"] = f"http://127.0.0.1:{ports['notifier']}"
    config = tmp / "bench.toml"
    config.write_text(f"""
data_dir = "{tmp}"
[logging]
level = "WARNING"
[kafka]
bootstrap_servers = "{bootstrap}"
topic_prefix = "{prefix}"
[api]
operator_tokens = ["{TOKEN}"]
[detector]
instance_id = "bench"
port = {ports['detector']}
eo_targets = false
{_toml(detector_settings)}[[detector.targets]]
id = "ada-as4"
component = "ada_b2g"
probe = "as4"
url = "http://127.0.0.1:{ports['ada-as4']}/as4"
[[detector.targets]]
id = "ntp"
component = "ntp"
url = "http://127.0.0.1:{ports['ntp']}/"
[procedure]
port = {ports['procedure']}
{_toml(procedure)}[notifier]
port = {ports['notifier']}
allow_insecure_webhooks = true
allow_private_webhooks = true
""", encoding="utf-8")
    return config


@contextlib.asynccontextmanager
async def running_pipeline(
    *, bootstrap: str, prefix: str, detector_settings: Mapping[str, float | int | str] | None = None,
    procedure_settings: Mapping[str, float | int | str] | None = None, procedure_reads_notifier: bool = False,
    client_timeout_s: float = 10.0,
) -> AsyncIterator[Pipeline]:
    """Start the simulator (ADA AS4, NTP, no EOs) and the three services, wait until each answers, yield;
    then stop them all (SIGTERM, SIGKILL after 20 s). The services' output goes to a log in a temporary
    folder, dropped with it."""
    base = free_port()
    ports = {"control": base, "ada-as4": free_port(), "ntp": free_port(), "receiver": free_port(),
             **{service: free_port() for service in SERVICES}}
    receiver = WebhookReceiver().start()
    script = luccs_fallback()[0]
    processes: list[subprocess.Popen[bytes]] = []
    with tempfile.TemporaryDirectory() as tmp_name, (Path(tmp_name) / "services.log").open("wb") as log:
        tmp = Path(tmp_name)
        config = _config(tmp, bootstrap=bootstrap, prefix=prefix, ports=ports,
                         detector_settings=detector_settings or {}, procedure_settings=procedure_settings or {},
                         procedure_reads_notifier=procedure_reads_notifier)
        try:
            processes.append(subprocess.Popen(
                [script, "simulator", "--base-port", str(base), "--eos", "0", "--log-level", "WARNING",
                 *(f"--port={name}={ports[name]}" for name in ("ada-as4", "ntp", "receiver"))],
                stdout=log, stderr=subprocess.STDOUT, env=checkout_env()))
            for service in SERVICES:
                processes.append(subprocess.Popen([script, service, "--config", str(config)], stdout=log,
                                                  stderr=subprocess.STDOUT, env=checkout_env()))
            async with httpx.AsyncClient(timeout=client_timeout_s) as client:
                pipeline = Pipeline(ports=ports, receiver=receiver, client=client)
                for service in SERVICES:
                    await wait_http(client, f"{pipeline.url(service)}/readyz")
                await wait_http(client, pipeline.control)
                yield pipeline
        finally:
            for process in processes:
                process.terminate()
            for process in processes:
                try:
                    process.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    process.kill()
            receiver.stop()


async def wait_for(predicate: Callable[[], bool], timeout_s: float, what: str) -> None:
    """Poll ``predicate`` every 10 ms until it holds; TimeoutError naming ``what`` after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"no {what} within {timeout_s}s")
        await asyncio.sleep(0.01)


async def wait_http(client: httpx.AsyncClient, url: str, timeout_s: float = 90) -> None:
    """Wait until ``url`` answers 200 (a service started and ready)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if (await client.get(url)).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        await asyncio.sleep(0.2)
    raise TimeoutError(f"{url} not ready within {timeout_s}s")


async def wait_status(client: httpx.AsyncClient, url: str, wanted: dict[str, str], timeout_s: float = 60) -> None:
    """Wait until the procedure service's status (``url``) shows exactly the ``wanted`` component states."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            states = {c["component"]: c["state"] for c in (await client.get(url)).json()["components"]}
        except httpx.TransportError:  # an idle keep-alive connection closed by the server as we reused it
            continue
        if states == wanted:
            return
        await asyncio.sleep(0.1)
    raise TimeoutError(f"components not {wanted} within {timeout_s}s")
