"""TLS against real loopback servers: certificate expiry, untrusted and expired certificates, mutual TLS."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import trustme
from prometheus_client import CollectorRegistry

from services.detector.domain import ProbeResult
from services.detector.metrics import DetectorMetrics
from services.detector.probes import Prober
from services.detector.service import Detector
from services.detector.targets import Target, from_settings
from shared.config import DetectorSettings, TargetSettings
from shared.events import AvailabilityData, CloudEvent
from tests.integration.test_probes_servers import LoopbackServer, Reply, receipt_for, static

pytestmark = pytest.mark.integration

DETECTOR = DetectorSettings(instance_id="it", interval_s=5, timeout_s=2.0, success_threshold=1)


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
def ca_file(ca: trustme.CA, tmp_path: Path) -> str:
    path = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(path))
    return str(path)


def server_context(cert: trustme.LeafCert, *, client_ca: trustme.CA | None = None) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    cert.configure_cert(context)
    if client_ca is not None:
        client_ca.configure_trust(context)
        context.verify_mode = ssl.CERT_REQUIRED
    return context


@pytest.fixture
async def servers() -> AsyncIterator[list[LoopbackServer]]:
    started: list[LoopbackServer] = []
    yield started
    for s in started:
        await s.close()


async def start(servers: list[LoopbackServer], context: ssl.SSLContext | None, behaviour: Any = None) -> LoopbackServer:
    server = await LoopbackServer(behaviour=behaviour or static(Reply()), tls=context).start()
    servers.append(server)
    return server


def target(url: str, **overrides: Any) -> Target:
    values: dict[str, Any] = {"id": "ada-tls", "component": "ada_b2g", "probe": "tls", "url": url}
    values.update(overrides)
    return from_settings(TargetSettings(**values), DETECTOR)


async def probe(t: Target) -> ProbeResult:
    return await Prober().probe(t)


async def test_short_lived_certificate_is_up_with_its_expiry_and_a_7_day_warning(
    ca: trustme.CA, ca_file: str, servers: list[LoopbackServer]
) -> None:
    expires = datetime.now(UTC).replace(microsecond=0) + timedelta(days=5)
    cert = ca.issue_cert("127.0.0.1", not_after=expires)
    server = await start(servers, server_context(cert))
    t = target(f"127.0.0.1:{server.port}", ca_file=ca_file)
    result = await probe(t)
    assert (result.ok, result.reason) == (True, "ok"), result.detail
    assert result.cert_expires_at is not None
    assert abs((result.cert_expires_at - expires).total_seconds()) <= 1
    assert "TLSv1" in (result.detail or "")

    async def discard(_t: str, _e: CloudEvent[AvailabilityData]) -> None:
        return None

    detector = Detector(
        settings=DETECTOR, prober=Prober(), send=discard, metrics=DetectorMetrics.create(CollectorRegistry())
    )
    detector.put(t)
    detector.record(t, result)
    assert detector.cert_warning_of(t.id) == 7


async def test_expired_certificate_is_down_as_expired(
    ca: trustme.CA, ca_file: str, servers: list[LoopbackServer]
) -> None:
    now = datetime.now(UTC)
    cert = ca.issue_cert("127.0.0.1", not_before=now - timedelta(days=30), not_after=now - timedelta(days=1))
    server = await start(servers, server_context(cert))
    result = await probe(target(f"tls://127.0.0.1:{server.port}", ca_file=ca_file))
    assert (result.ok, result.reason) == (False, "tls_expired")
    assert "expired" in (result.detail or "")


async def test_untrusted_certificate_is_down(ca: trustme.CA, servers: list[LoopbackServer]) -> None:
    server = await start(servers, server_context(ca.issue_cert("127.0.0.1")))
    result = await probe(target(f"127.0.0.1:{server.port}"))  # system CAs only: the test CA is unknown
    assert (result.ok, result.reason) == (False, "tls_invalid")


async def test_certificate_for_another_name_is_down(
    ca: trustme.CA, ca_file: str, servers: list[LoopbackServer]
) -> None:
    server = await start(servers, server_context(ca.issue_cert("b2g.example.lu")))
    result = await probe(target(f"127.0.0.1:{server.port}", ca_file=ca_file))
    assert (result.ok, result.reason) == (False, "tls_invalid")


async def test_a_server_that_does_not_speak_tls_fails_the_handshake() -> None:
    async def banner(_reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"SSH-2.0-OpenSSH_9.2\r\n")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(banner, "127.0.0.1", 0)
    try:
        result = await probe(target(f"127.0.0.1:{server.sockets[0].getsockname()[1]}"))
    finally:
        server.close()
    assert (result.ok, result.reason) == (False, "tls_error"), result


async def test_https_http_probe_reports_the_certificate_expiry(
    ca: trustme.CA, ca_file: str, servers: list[LoopbackServer]
) -> None:
    server = await start(servers, server_context(ca.issue_cert("127.0.0.1")))
    result = await probe(target(server.url("/health"), probe="http", ca_file=ca_file))
    assert (result.ok, result.reason) == (True, "ok"), result.detail
    assert result.cert_expires_at is not None
    assert server.requests[0].path == "/health"


# --- mutual TLS ----------------------------------------------------------------------------------


@pytest.fixture
def client_pem(ca: trustme.CA, tmp_path: Path) -> str:
    path = tmp_path / "client.pem"
    ca.issue_cert("detector@luccs-fallback.test").private_key_and_cert_chain_pem.write_to_path(str(path))
    return str(path)


async def test_mtls_msh_accepts_the_configured_client_certificate(
    ca: trustme.CA, ca_file: str, client_pem: str, servers: list[LoopbackServer]
) -> None:
    server = await start(servers, server_context(ca.issue_cert("127.0.0.1"), client_ca=ca), receipt_for)
    result = await probe(target(server.url("/msh"), probe="as4", ca_file=ca_file, client_cert_file=client_pem))
    assert (result.ok, result.reason) == (True, "ok"), result.detail
    assert len(server.requests) == 1


async def test_mtls_msh_rejects_a_detector_without_a_client_certificate(
    ca: trustme.CA, ca_file: str, servers: list[LoopbackServer]
) -> None:
    server = await start(servers, server_context(ca.issue_cert("127.0.0.1"), client_ca=ca), receipt_for)
    result = await probe(target(server.url("/msh"), probe="as4", ca_file=ca_file))
    assert not result.ok
    assert result.reason in ("tls_error", "reset"), result
    assert server.requests == [], "no request got through"


async def test_mtls_msh_rejects_a_certificate_from_another_ca(
    ca: trustme.CA, ca_file: str, servers: list[LoopbackServer], tmp_path: Path
) -> None:
    stranger = tmp_path / "stranger.pem"
    trustme.CA().issue_cert("x@y.test").private_key_and_cert_chain_pem.write_to_path(str(stranger))
    server = await start(servers, server_context(ca.issue_cert("127.0.0.1"), client_ca=ca), receipt_for)
    result = await probe(target(server.url("/msh"), probe="as4", ca_file=ca_file, client_cert_file=str(stranger)))
    assert not result.ok
    assert result.reason in ("tls_error", "reset")


def test_missing_tls_files_are_reported_before_probing(tmp_path: Path) -> None:
    with pytest.raises(OSError, match="No such file"):
        Prober().check(target("127.0.0.1:443", ca_file=str(tmp_path / "missing.pem")))
