"""Certificate expiry reaches the Servicedesk, over the real broker: the detector, the procedure service and
the notifier (each its app under uvicorn on loopback, SQLite files) with a TLS target whose certificate
expires in 20 days, served on loopback, and a real SMTP server. The probes go on every half second: the
Servicedesk gets one e-mail, the status lists one advisory, and the console says which certificate expires
on which day."""

from __future__ import annotations

import ssl
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import trustme
from aiosmtpd.controller import Controller

from services.detector.app import create_app as detector_app
from services.notifier.app import create_app as notifier_app
from services.procedure.app import create_app as procedure_app
from shared.config import (
    DetectorSettings,
    KafkaSettings,
    NotifierSettings,
    ProcedureSettings,
    Settings,
    SmtpSettings,
    TargetSettings,
)
from tests.integration.test_notifier_email import Mailbox
from tests.integration.test_probes_servers import LoopbackServer, Reply, static
from tests.support import eventually, free_port, serving

pytestmark = pytest.mark.integration

SERVICEDESK = "servicedesk@douanes.lu"


async def test_a_tls_certificate_expiring_within_30_days_is_told_to_the_servicedesk_once(
    tmp_path: Path, kafka_bootstrap: str, topic_prefix: str
) -> None:
    ca = trustme.CA()
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    expires = datetime.now(UTC).replace(microsecond=0) + timedelta(days=20)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1", not_after=expires).configure_cert(context)
    tls_server = await LoopbackServer(behaviour=static(Reply()), tls=context).start()
    box = Mailbox()
    smtp = Controller(box, hostname="127.0.0.1", port=free_port())
    smtp.start()
    settings = Settings(
        data_dir=tmp_path,
        kafka=KafkaSettings(bootstrap_servers=kafka_bootstrap, topic_prefix=topic_prefix),
        detector=DetectorSettings(
            instance_id="d1", interval_s=0.5, success_threshold=1, heartbeat_s=1,
            targets=[TargetSettings(id="ada-tls", component="ada_b2g", probe="tls",
                                    url=f"127.0.0.1:{tls_server.port}", ca_file=str(ca_file))],
        ),
        procedure=ProcedureSettings(tick_s=0.2, stale_after_s=3600),  # NTP has no target: no blind advisory mail
        notifier=NotifierSettings(servicedesk_email=SERVICEDESK, backoff_base_s=0.05, backoff_max_s=0.2),
        smtp=SmtpSettings(host="127.0.0.1", port=smtp.port, from_address="luccs-fallback@douanes.lu"),
    )
    try:
        async with (serving(notifier_app(settings)), serving(procedure_app(settings)) as procedure_client,
                    serving(detector_app(settings)), httpx.AsyncClient(timeout=10) as client):
            procedure = str(procedure_client.base_url).rstrip("/")

            async def advisories() -> list[dict[str, Any]]:
                found: list[dict[str, Any]] = (await client.get(f"{procedure}/api/v1/status")).json()["advisories"]
                return [a for a in found if a["kind"] == "certificate_expiring"]

            await eventually(lambda: len(box.to(SERVICEDESK)) >= 1, timeout=60, what="the Servicedesk's e-mail")
            [first] = await advisories()
            told_at = datetime.now(UTC)
            # Many more probes of the same certificate (a probe every half second, heartbeats) tell nothing more.
            await eventually(lambda: _observed_after(client, procedure, told_at + timedelta(seconds=3)), timeout=30,
                             what="observations 3 s after the advisory")
            [advisory] = await advisories()
            assert advisory == first  # not raised again (that would move raised_at)
            english = (await client.get(f"{procedure}/?lang=en")).text
            german = (await client.get(f"{procedure}/?lang=de")).text
    finally:
        smtp.stop()
        await tls_server.close()
    [mail] = box.to(SERVICEDESK)
    assert "LUCCS" in mail["Subject"] and advisory["advisory_id"] in mail["Subject"]
    assert "30" in mail["Subject"]  # the warning level reached
    body = mail.get_content()
    assert "ada-tls" in body and "certificate_expiring" in body
    certificate = advisory["certificate"]
    assert (certificate["target_id"], certificate["component"], certificate["role"], certificate["warning_days"]) == (
        "ada-tls", "ada_b2g", "tls", 30)
    assert abs((datetime.fromisoformat(certificate["expires_at"]) - expires).total_seconds()) <= 1
    day = expires.strftime("%Y-%m-%d")
    assert f"Certificate of ADA B2G (AS4) (TLS, ada-tls) expires on {day}" in english
    assert f"Zertifikat von B2G der ADA (AS4) (TLS, ada-tls) läuft am {day} ab" in german


async def _observed_after(client: httpx.AsyncClient, procedure: str, moment: datetime) -> bool:
    """The procedure service has recorded an observation of ADA B2G made after ``moment``."""
    status = (await client.get(f"{procedure}/api/v1/status")).json()
    return any(datetime.fromisoformat(e["observed_at"]) > moment
               for c in status["components"] if c["component"] == "ada_b2g" for e in c["evidence"])
