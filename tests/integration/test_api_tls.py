"""TLS on the services' own ports, over real loopback servers with ``trustme`` certificates: https works, plain
http to the TLS port gets no answer, a client without a certificate from ``api.tls_client_ca_file`` is refused
in the handshake, the status page reads the notifier over mutual TLS, and a bad file is one line at start."""

from __future__ import annotations

import asyncio
import importlib.util
import os
import signal
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import httpx
import pytest
import trustme
from fastapi import FastAPI
from prometheus_client import CollectorRegistry

from shared.config import load_settings
from shared.http import add_ops_routes, serve
from tests.support import eventually, free_port

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]

# Whatever a client sees when the server ends the connection in (or right after) the handshake.
REFUSED = (httpx.ConnectError, httpx.ReadError, httpx.RemoteProtocolError, httpx.WriteError)


@dataclass(frozen=True)
class Pki:
    ca: trustme.CA
    ca_file: Path
    server: Path  # certificate and key of the services: localhost, 127.0.0.1
    client: trustme.LeafCert  # an operator's client certificate, from the same CA
    stranger: trustme.LeafCert  # a client certificate from a CA the services do not trust
    stranger_ca: trustme.CA


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    folder = tmp_path_factory.mktemp("pki")
    ca, stranger_ca = trustme.CA(), trustme.CA()
    ca.cert_pem.write_to_path(str(folder / "ca.pem"))
    ca.issue_cert("localhost", "127.0.0.1").private_key_and_cert_chain_pem.write_to_path(str(folder / "server.pem"))
    return Pki(ca, folder / "ca.pem", folder / "server.pem", ca.issue_cert("operator@example.lu"),
               stranger_ca.issue_cert("someone@example.com"), stranger_ca)


def client(pki: Pki, certificate: trustme.LeafCert | None = None) -> httpx.AsyncClient:
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    pki.ca.configure_trust(context)
    if certificate is not None:
        certificate.configure_cert(context)
    return httpx.AsyncClient(verify=context, timeout=5)


def tls_config(tmp_path: Path, pki: Pki, *, client_ca: bool) -> Path:
    config = tmp_path / "api.toml"
    client_ca_line = f'tls_client_ca_file = "{pki.ca_file}"\n' if client_ca else ""
    config.write_text(f'[api]\ntls_cert_file = "{pki.server}"\n{client_ca_line}', encoding="utf-8")
    return config


@pytest.fixture
async def https_port(request: pytest.FixtureRequest, tmp_path: Path, pki: Pki) -> AsyncIterator[int]:
    """A FastAPI app with the ops routes served by ``shared.http.serve`` (the services' own server) with the
    TLS context of a configuration; ``client_ca`` (indirect parameter) asks for client certificates."""
    settings = load_settings(tls_config(tmp_path, pki, client_ca=bool(getattr(request, "param", False))))
    app = FastAPI(title="tls test app")
    add_ops_routes(app, checks={}, registry=CollectorRegistry())
    port = free_port()
    server = asyncio.create_task(serve(app, host="127.0.0.1", port=port,
                                       ssl_context=settings.api.server_ssl_context()))

    async def listening() -> bool:
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            assert not server.done(), server
            return False
        writer.close()
        await writer.wait_closed()
        return True

    await eventually(listening, timeout=20, what="the https server to listen")
    try:
        yield port
    finally:
        server.cancel()
        with pytest.raises(asyncio.CancelledError):
            await server


async def test_https_works_and_plain_http_to_the_tls_port_gets_no_answer(https_port: int, pki: Pki) -> None:
    async with client(pki) as https:
        response = await https.get(f"https://localhost:{https_port}/healthz")
        assert response.status_code == 200 and response.json() == {"status": "ok"}
        assert (await https.get(f"https://127.0.0.1:{https_port}/healthz")).status_code == 200
    async with httpx.AsyncClient(timeout=5) as plain:
        with pytest.raises(REFUSED):
            await plain.get(f"http://127.0.0.1:{https_port}/healthz")
    async with httpx.AsyncClient(timeout=5) as untrusting:  # the system's CAs do not know the test CA
        with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
            await untrusting.get(f"https://localhost:{https_port}/healthz")


@pytest.mark.parametrize("https_port", [True], indirect=True)
async def test_with_a_client_ca_only_clients_with_its_certificates_are_answered(https_port: int, pki: Pki) -> None:
    url = f"https://localhost:{https_port}/healthz"
    async with client(pki, pki.client) as operator:
        assert (await operator.get(url)).status_code == 200
    async with client(pki) as anonymous:
        with pytest.raises(REFUSED):
            await anonymous.get(url)
    async with client(pki, pki.stranger) as stranger:
        with pytest.raises(REFUSED):
            await stranger.get(url)


def _healthcheck_module() -> ModuleType:
    path = ROOT / "deploy" / "container" / "healthcheck.py"
    spec = importlib.util.spec_from_file_location("deploy_healthcheck", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("https_port", [True], indirect=True)
async def test_the_container_healthcheck_speaks_https_and_presents_the_services_certificate(
    https_port: int, tmp_path: Path, pki: Pki
) -> None:
    health = _healthcheck_module()
    config = tls_config(tmp_path, pki, client_ca=True)
    config.write_text(config.read_text(encoding="utf-8") + f"[detector]\nport = {https_port}\n", encoding="utf-8")
    urls, context = health.health_plan("detector", str(config))
    assert urls == [f"https://127.0.0.1:{https_port}/healthz"]
    assert await asyncio.to_thread(health.check, urls[0], context=context) is None
    problem = await asyncio.to_thread(health.check, urls[0])  # without our certificate: refused
    assert problem is not None and ("SSL" in problem or "reset" in problem.lower()), problem


# --- the real services, `luccs-fallback all`, as an operator runs them -----------------------------------

SERVICES = ("detector", "procedure", "notifier")


@pytest.fixture
def all_over_mutual_tls(tmp_path: Path, pki: Pki, kafka_bootstrap: str, topic_prefix: str) -> Iterator[dict[str, int]]:
    """``luccs-fallback all`` with TLS and client certificates on its three ports; the ports by service."""
    ports = {name: free_port() for name in SERVICES}
    config = tmp_path / "luccs.toml"
    sections = "".join(f"[{name}]\nport = {port}\n" for name, port in ports.items() if name != "procedure")
    config.write_text(
        f'data_dir = "{tmp_path}"\n[kafka]\nbootstrap_servers = "{kafka_bootstrap}"\ntopic_prefix = "{topic_prefix}"\n'
        f'[api]\ntls_cert_file = "{pki.server}"\ntls_client_ca_file = "{pki.ca_file}"\n{sections}'
        f'[procedure]\nport = {ports["procedure"]}\nnotifier_url = "https://localhost:{ports["notifier"]}"\n'
        f'notifier_ca_file = "{pki.ca_file}"\n',
        encoding="utf-8",
    )
    script = Path(sys.executable).with_name("luccs-fallback")
    environment = {k: v for k, v in os.environ.items() if not k.startswith("LUCCS_")}
    process = subprocess.Popen([str(script), "all", "--config", str(config)], stdin=subprocess.DEVNULL,
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=environment)
    stderr = process.stderr
    assert stderr is not None
    output: list[bytes] = []
    reader = threading.Thread(target=lambda: output.extend(iter(stderr.readline, b"")), daemon=True)
    reader.start()
    try:
        deadline = time.monotonic() + 120
        while b"".join(output).count(b"Uvicorn running on https://") < len(SERVICES):
            assert process.poll() is None, b"".join(output).decode()[-3000:]
            assert time.monotonic() < deadline, b"".join(output).decode()[-3000:]
            time.sleep(0.1)
        yield ports
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=60) == 0, b"".join(output).decode()[-3000:]
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        reader.join(timeout=10)
        stderr.close()


async def test_all_three_services_serve_https_with_client_certificates_and_read_each_other(
    all_over_mutual_tls: dict[str, int], pki: Pki
) -> None:
    async with client(pki, pki.client) as operator, client(pki) as anonymous, httpx.AsyncClient(timeout=5) as plain:
        for name, port in all_over_mutual_tls.items():
            response = await operator.get(f"https://localhost:{port}/healthz")
            assert response.status_code == 200, (name, response.text)
            with pytest.raises(REFUSED):
                await anonymous.get(f"https://localhost:{port}/healthz")
            with pytest.raises(REFUSED):
                await plain.get(f"http://127.0.0.1:{port}/healthz")
        # The status page reads the notifier's summary over https, presenting the services' own certificate.
        page = await operator.get(f"https://localhost:{all_over_mutual_tls['procedure']}/")
        assert page.status_code == 200, page.text
        assert "did not answer" not in page.text
        assert "Recent deliveries" in page.text and "Last 0:" in page.text


def test_a_key_not_matching_its_certificate_stops_the_start_in_one_line(tmp_path: Path, pki: Pki) -> None:
    cert, other_key = tmp_path / "cert.pem", tmp_path / "other-key.pem"
    pki.ca.issue_cert("localhost").cert_chain_pems[0].write_to_path(str(cert))
    pki.ca.issue_cert("localhost").private_key_pem.write_to_path(str(other_key))
    config = tmp_path / "luccs.toml"
    config.write_text(f'[api]\ntls_cert_file = "{cert}"\ntls_key_file = "{other_key}"\n', encoding="utf-8")
    script = Path(sys.executable).with_name("luccs-fallback")
    environment = {k: v for k, v in os.environ.items() if not k.startswith("LUCCS_")}
    done = subprocess.run([str(script), "all", "--config", str(config)], capture_output=True, text=True,
                          timeout=60, check=False, env=environment)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        f"luccs-fallback: {config}: api: api.tls_cert_file {cert}: api.tls_key_file {other_key} does not match "
        "the certificate"
    ]
