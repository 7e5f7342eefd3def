"""The as4 probe against real loopback MSHs: receipt, ebMS error, maintenance page, and broken endpoints."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import trustme
from lxml import etree

from services.detector.domain import ProbeResult
from services.detector.probes import Prober
from services.detector.targets import Target, from_eo, from_settings
from shared.config import DetectorSettings, TargetSettings
from shared.events import EoData
from tests.integration.test_probes_servers import (
    EBMS_NS,
    MAINTENANCE,
    CloseSilently,
    Hang,
    LoopbackServer,
    Reply,
    Request,
    Reset,
    ebms_error,
    receipt_for,
    static,
)
from tests.support import free_port

pytestmark = pytest.mark.integration

DETECTOR = DetectorSettings(instance_id="it", interval_s=5, timeout_s=1.0)
TEST_SERVICE = "http://docs.oasis-open.org/ebxml-msg/ebms/v3.0/ns/core/200704/service"
TEST_ACTION = "http://docs.oasis-open.org/ebxml-msg/ebms/v3.0/ns/core/200704/test"

ServerFactory = Callable[..., Awaitable[LoopbackServer]]


@pytest.fixture
async def server() -> AsyncIterator[ServerFactory]:
    started: list[LoopbackServer] = []

    async def start(behaviour: Any, **kwargs: Any) -> LoopbackServer:
        s = await LoopbackServer(behaviour=behaviour, **kwargs).start()
        started.append(s)
        return s

    yield start
    for s in started:
        await s.close()


def as4_target(url: str, **overrides: Any) -> Target:
    values: dict[str, Any] = {"id": "ada-as4", "component": "ada_b2g", "probe": "as4", "url": url}
    values.update(overrides)
    return from_settings(TargetSettings(**values), DETECTOR)


async def probe(target: Target) -> ProbeResult:
    return await Prober().probe(target)


async def test_receipt_is_up_and_the_ping_is_a_real_ebms3_user_message(server: ServerFactory) -> None:
    msh = await server(receipt_for)
    target = as4_target(msh.url("/msh"), as4_to_party_id="ADA-LU")
    first = await probe(target)
    second = await probe(target)
    assert (first.ok, first.reason) == (True, "ok"), first.detail
    assert "another message" not in (first.detail or ""), "the receipt refers to our MessageId"
    assert second.ok
    assert first.latency_ms is not None and first.latency_ms > 0

    ids = []
    for request in msh.requests:
        assert (request.method, request.path) == ("POST", "/msh")
        assert request.headers["content-type"].startswith("application/soap+xml")
        root = etree.fromstring(request.body)
        assert root.tag == "{http://www.w3.org/2003/05/soap-envelope}Envelope"
        assert root.findtext(f".//{{{EBMS_NS}}}CollaborationInfo/{{{EBMS_NS}}}Service") == TEST_SERVICE
        assert root.findtext(f".//{{{EBMS_NS}}}CollaborationInfo/{{{EBMS_NS}}}Action") == TEST_ACTION
        assert root.findtext(f".//{{{EBMS_NS}}}To/{{{EBMS_NS}}}PartyId") == "ADA-LU"
        assert root.findtext(f".//{{{EBMS_NS}}}MessageInfo/{{{EBMS_NS}}}Timestamp")
        ids.append(request.message_id())
    assert len(set(ids)) == 2, "a fresh MessageId per ping"


async def test_an_eo_endpoint_is_pinged_with_its_eori_as_party(server: ServerFactory) -> None:
    msh = await server(receipt_for)
    target = from_eo(EoData(eori="LU12345678901234", name="T", as4_endpoint=msh.url("/as4")), DETECTOR)
    assert target is not None
    assert (await probe(target)).ok
    root = etree.fromstring(msh.requests[0].body)
    party = root.find(f".//{{{EBMS_NS}}}To/{{{EBMS_NS}}}PartyId")
    assert party is not None
    assert (party.text, party.get("type")) == (
        "LU12345678901234", "urn:oasis:names:tc:ebcore:partyid-type:eu-customs:EORI",
    )


@pytest.mark.parametrize("status", [500, 200])
async def test_an_ebms_error_is_up_with_the_error_recorded(server: ServerFactory, status: int) -> None:
    msh = await server(lambda r: ebms_error(r, "EBMS:0103", status))
    result = await probe(as4_target(msh.url()))
    assert (result.ok, result.reason, result.ebms_error) == (True, "ebms_error", "EBMS:0103")
    assert "Message must be signed" in (result.detail or "")


@pytest.mark.parametrize(
    ("outcome", "reason"),
    [
        (MAINTENANCE, "http_503"),
        (Reply(200, b"<html><body>Scheduled maintenance</body></html>", "text/html"), "not_soap"),
        (Reply(502, b"Bad Gateway", "text/plain"), "http_502"),
        (Reply(504, b"", "text/plain"), "http_504"),
        (Reply(200, b"", "application/soap+xml"), "empty_response"),
        (Reply(404, b"<html>Not Found</html>", "text/html"), "http_404"),
    ],
)
async def test_non_msh_answers_are_down(server: ServerFactory, outcome: Reply, reason: str) -> None:
    msh = await server(static(outcome))
    result = await probe(as4_target(msh.url()))
    assert (result.ok, result.reason) == (False, reason)


async def test_a_receipt_sent_chunked_is_read_whole(server: ServerFactory) -> None:
    def chunked(request: Request) -> Reply:
        plain = receipt_for(request)
        return Reply(plain.status, plain.body, plain.content_type, chunked=True)

    msh = await server(chunked)
    assert (await probe(as4_target(msh.url()))).reason == "ok"


async def test_entity_tricks_are_refused_not_expanded(server: ServerFactory) -> None:
    lol = (
        b'<?xml version="1.0"?><!DOCTYPE env [<!ENTITY a "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa">'
        b'<!ENTITY b "&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;">'
        b'<!ENTITY c "&b;&b;&b;&b;&b;&b;&b;&b;&b;&b;&b;&b;&b;&b;&b;&b;&b;&b;&b;&b;&b;&b;&b;&b;">]>'
        b'<env:Envelope xmlns:env="http://www.w3.org/2003/05/soap-envelope"><env:Body>&c;&c;&c;</env:Body>'
        b"</env:Envelope>"
    )
    msh = await server(static(Reply(200, lol, "application/soap+xml")))
    result = await probe(as4_target(msh.url()))
    assert (result.ok, result.reason) == (False, "invalid_response")
    assert "aaaa" not in (result.detail or "")


async def test_an_oversized_answer_is_not_read_to_the_end(server: ServerFactory) -> None:
    msh = await server(static(Reply(200, b"<x>" + b"a" * 3_000_000 + b"</x>", "application/soap+xml")))
    result = await probe(as4_target(msh.url()))
    assert (result.ok, result.reason) == (False, "too_large")


async def test_a_hanging_msh_times_out_within_the_timeout(server: ServerFactory) -> None:
    msh = await server(static(Hang()))
    started = time.monotonic()
    result = await probe(as4_target(msh.url(), timeout_s=0.3))
    assert (result.ok, result.reason) == (False, "timeout")
    assert time.monotonic() - started < 5, "the probe is cut at its timeout, not left hanging"


async def test_a_closed_port_is_refused() -> None:
    result = await probe(as4_target(f"http://127.0.0.1:{free_port()}/msh"))
    assert (result.ok, result.reason) == (False, "refused")


@pytest.mark.parametrize("outcome", [Reset(), CloseSilently()], ids=["rst", "close"])
async def test_a_dropped_connection_is_reset(server: ServerFactory, outcome: Any) -> None:
    msh = await server(static(outcome))
    result = await probe(as4_target(msh.url()))
    assert (result.ok, result.reason) == (False, "reset")


async def test_as4_over_tls_reports_the_certificate_expiry(server: ServerFactory, tmp_path: Path) -> None:
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1")
    context = trustme_server_context(cert)
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    msh = await server(receipt_for, tls=context)
    result = await probe(as4_target(msh.url("/msh"), ca_file=str(ca_file)))
    assert (result.ok, result.reason) == (True, "ok"), result.detail
    assert result.cert_expires_at is not None


def trustme_server_context(cert: trustme.LeafCert) -> Any:
    import ssl

    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    cert.configure_cert(context)
    return context
