"""Unit tests of the probes over an in-memory HTTP client (no sockets), and of failure reason codes."""

from __future__ import annotations

import asyncio
import socket
import ssl
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import h11
import pytest
from lxml import etree

from services.detector.probes import HttpAnswer, HttpRequest, ProbeFailure, Prober
from services.detector.probes._transport import failure_from
from services.detector.probes.domibus import classify_status
from services.detector.probes.ebms import EBMS_NS, SOAP12_NS
from services.detector.targets import TlsFiles, from_eo, from_settings
from shared.config import DetectorSettings, TargetSettings
from shared.events import EoData

DETECTOR = DetectorSettings(instance_id="t", interval_s=5, timeout_s=0.5)
RECEIPT = (
    f'<env:Envelope xmlns:env="{SOAP12_NS}" xmlns:eb="{EBMS_NS}"><env:Header><eb:Messaging><eb:SignalMessage>'
    f"<eb:Receipt/></eb:SignalMessage></eb:Messaging></env:Header><env:Body/></env:Envelope>"
).encode()


@dataclass
class FakeHttp:
    """Answers with ``answer(request)``; records every request."""

    answer: Callable[[HttpRequest], HttpAnswer]
    requests: list[HttpRequest] = field(default_factory=list)

    async def exchange(self, request: HttpRequest, *, tls: TlsFiles, max_body: int) -> HttpAnswer:
        self.requests.append(request)
        return self.answer(request)


def prober(answer: Callable[[HttpRequest], HttpAnswer]) -> tuple[Prober, FakeHttp]:
    fake = FakeHttp(answer)
    return Prober(http=fake), fake


def target(**overrides: Any) -> Any:
    values: dict[str, Any] = {"id": "t", "component": "ntp", "url": "http://127.0.0.1:8080/health"}
    values.update(overrides)
    return from_settings(TargetSettings(**values), DETECTOR)


# --- http -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("overrides", "status", "body", "ok", "reason"),
    [
        ({}, 200, b"ok", True, "ok"),
        ({}, 204, b"", True, "ok"),
        ({}, 301, b"", False, "http_301"),
        ({}, 503, b"maintenance", False, "http_503"),
        ({"expected_status": [401]}, 401, b"", True, "ok"),
        ({"expected_status": [401]}, 200, b"", False, "http_200"),
        ({"body_contains": "National Trader Portal"}, 200, b"<h1>National Trader Portal</h1>", True, "ok"),
        ({"body_contains": "National Trader Portal"}, 200, b"<h1>Maintenance</h1>", False, "body_mismatch"),
    ],
)
async def test_http_probe(overrides: dict[str, Any], status: int, body: bytes, ok: bool, reason: str) -> None:
    probe, fake = prober(lambda _r: HttpAnswer(status, {}, body))
    result = await probe.probe(target(**overrides))
    assert (result.ok, result.reason) == (ok, reason)
    assert result.latency_ms is not None and result.latency_ms >= 0
    assert fake.requests[0].method == "GET"
    assert fake.requests[0].endpoint.path == "/health"


async def test_http_probe_sends_method_and_basic_auth() -> None:
    probe, fake = prober(lambda _r: HttpAnswer(200))
    await probe.probe(target(method="HEAD", username="monitor", password="s3cret"))
    assert fake.requests[0].method == "HEAD"
    assert fake.requests[0].basic_auth == ("monitor", "s3cret")


# --- as4 --------------------------------------------------------------------------------------------


async def test_as4_probe_posts_a_fresh_ping_each_time() -> None:
    probe, fake = prober(lambda _r: HttpAnswer(200, {"content-type": "application/soap+xml"}, RECEIPT))
    eo = from_eo(EoData(eori="LU12345678901234", name="T", as4_endpoint="http://127.0.0.1:1/msh"), DETECTOR)
    assert eo is not None
    first = await probe.probe(eo)
    second = await probe.probe(eo)
    assert (first.ok, first.reason) == (True, "ok")
    assert second.ok
    ids = []
    for request in fake.requests:
        assert request.method == "POST"
        assert dict(request.headers)["Content-Type"].startswith("application/soap+xml")
        root = etree.fromstring(request.body)
        ids.append(root.findtext(f".//{{{EBMS_NS}}}MessageId"))
        assert root.findtext(f".//{{{EBMS_NS}}}To/{{{EBMS_NS}}}PartyId") == "LU12345678901234"
    assert ids[0] != ids[1], "every ping has a fresh MessageId"


async def test_as4_probe_records_the_ebms_error() -> None:
    error = RECEIPT.replace(b"<eb:Receipt/>", b'<eb:Error errorCode="EBMS:0103" shortDescription="Policy"/>')
    probe, _ = prober(lambda _r: HttpAnswer(500, {"content-type": "application/soap+xml"}, error))
    result = await probe.probe(target(probe="as4"))
    assert (result.ok, result.reason, result.ebms_error) == (True, "ebms_error", "EBMS:0103")


# --- domibus ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "body", "ok", "reason", "detail"),
    [
        (200, b'{"services":[{"name":"Database","status":"NORMAL"},{"name":"JMSBroker","status":"NORMAL"}]}',
         True, "ok", "Database"),
        (200, b'{"services":[{"name":"Database","status":"NORMAL"},{"name":"JMSBroker","status":"ERROR"}]}',
         False, "domibus_error", "JMSBroker: ERROR"),
        (200, b'{"services":[{"name":"Quartz Trigger","status":"BLOCKED"}]}', False, "domibus_blocked",
         "Quartz Trigger: BLOCKED"),
        (200, b'{"services":[{"name":"Db","status":"WARMING_UP"}]}', False, "domibus_status", "Db: WARMING_UP"),
        (200, b'{"services":[]}', False, "invalid_response", "services"),
        (200, b"<html>login</html>", False, "invalid_response", "login"),
        (401, b"", False, "http_401", "HTTP 401"),
    ],
)
def test_domibus_status(status: int, body: bytes, ok: bool, reason: str, detail: str) -> None:
    verdict = classify_status(status, body)
    assert (verdict.ok, verdict.reason) == (ok, reason)
    assert detail in (verdict.detail or "")


async def test_domibus_probe_asks_for_json_at_the_monitoring_path() -> None:
    probe, fake = prober(lambda _r: HttpAnswer(200, {}, b'{"services":[{"name":"Database","status":"NORMAL"}]}'))
    result = await probe.probe(target(probe="domibus", url="https://ap.example.lu"))
    assert result.ok
    assert fake.requests[0].endpoint.path == "/ext/monitoring/application/status"
    assert ("Accept", "application/json") in fake.requests[0].headers


# --- the prober: timeouts and failures ------------------------------------------------------------


async def test_a_hanging_answer_is_cut_at_the_timeout() -> None:
    class Hanging:
        async def exchange(self, request: HttpRequest, *, tls: TlsFiles, max_body: int) -> HttpAnswer:
            await asyncio.Event().wait()
            raise AssertionError("unreachable")

    result = await Prober(http=Hanging()).probe(target(timeout_s=0.05))
    assert (result.ok, result.reason) == (False, "timeout")
    assert result.latency_ms is not None and result.latency_ms >= 50


class Hanging:
    """An HTTP client whose answer never comes (until the probe is cancelled)."""

    async def exchange(self, request: HttpRequest, *, tls: TlsFiles, max_body: int) -> HttpAnswer:
        await asyncio.Event().wait()
        raise AssertionError("unreachable")


async def test_hanging_probes_are_each_cut_at_their_own_timeout_and_no_deadline_is_left_behind() -> None:
    probe = Prober(http=Hanging())
    quick, slow = target(id="quick", timeout_s=0.05), target(id="slow", timeout_s=0.2)
    results = await asyncio.gather(probe.probe(slow), probe.probe(quick), probe.probe(slow))
    assert [(r.ok, r.reason) for r in results] == [(False, "timeout")] * 3
    latencies = [r.latency_ms or 0.0 for r in results]
    assert latencies[1] >= 50 and latencies[0] >= 200 and latencies[2] >= 200
    assert latencies[1] < latencies[0]  # the 0.05 s probe was not held until the 0.2 s one's sweep
    assert len(probe._deadlines) == 0 and probe._deadlines._timer is None  # idle: nothing swept, no wake-up


async def test_probes_that_answer_leave_no_deadline_once_swept() -> None:
    probe = prober(lambda _r: HttpAnswer(200, {}, b"ok"))[0]
    results = await asyncio.gather(*(probe.probe(target(id=f"t{i}", timeout_s=0.05)) for i in range(50)))
    assert all(r.ok for r in results)
    deadline = asyncio.get_running_loop().time() + 5
    while len(probe._deadlines) and asyncio.get_running_loop().time() < deadline:  # bounded: one sweep is due
        await asyncio.sleep(0.01)
    assert len(probe._deadlines) == 0 and probe._deadlines._timer is None


async def test_a_probe_cancelled_from_outside_is_cancelled_not_timed_out() -> None:
    probe = Prober(http=Hanging())
    running = asyncio.create_task(probe.probe(target(timeout_s=30)))
    await asyncio.sleep(0.01)
    running.cancel()
    with pytest.raises(asyncio.CancelledError):
        await running


def test_a_prober_used_on_a_second_event_loop_still_cuts_its_probes() -> None:
    probe = prober(lambda _r: HttpAnswer(200, {}, b"ok"))[0]
    # The first loop ends with a deadline still queued and its sweep armed, never to run.
    assert asyncio.run(probe.probe(target(timeout_s=30))).ok
    probe._http = Hanging()
    result = asyncio.run(asyncio.wait_for(probe.probe(target(timeout_s=0.05)), timeout=10))
    assert (result.ok, result.reason) == (False, "timeout")


async def test_a_probe_failure_keeps_its_reason() -> None:
    def refuse(_r: HttpRequest) -> HttpAnswer:
        raise ProbeFailure("refused", "connection refused")

    result = await prober(refuse)[0].probe(target())
    assert (result.ok, result.reason, result.detail) == (False, "refused", "connection refused")


async def test_an_unexpected_error_becomes_a_failed_probe_not_an_exception() -> None:
    def boom(_r: HttpRequest) -> HttpAnswer:
        raise RuntimeError("bug")

    result = await prober(boom)[0].probe(target())
    assert (result.ok, result.reason) == (False, "probe_error")
    assert "bug" in (result.detail or "")


def _wrapped(inner: BaseException) -> Exception:
    try:
        try:
            raise inner
        except BaseException as exc:
            raise OSError("outer") from exc
    except OSError as outer:
        return outer


def _cert_error(code: int, message: str) -> ssl.SSLCertVerificationError:
    error = ssl.SSLCertVerificationError(1, message)
    error.verify_code = code
    error.verify_message = message
    return error


@pytest.mark.parametrize(
    ("exc", "reason"),
    [
        (ConnectionRefusedError(111, "refused"), "refused"),
        (ConnectionResetError(104, "reset by peer"), "reset"),
        (BrokenPipeError(32, "broken pipe"), "reset"),
        (socket.gaierror(-2, "Name or service not known"), "dns"),
        (TimeoutError(), "timeout"),
        (OSError(113, "No route to host"), "unreachable"),
        (OSError(22, "weird"), "network_error"),
        (_cert_error(10, "certificate has expired"), "tls_expired"),
        (_cert_error(20, "unable to get local issuer certificate"), "tls_invalid"),
        (ssl.SSLError(1, "[SSL: TLSV13_ALERT_CERTIFICATE_REQUIRED] alert"), "tls_error"),
        (h11.RemoteProtocolError("illegal header"), "protocol_error"),
        (_wrapped(socket.gaierror(-3, "Temporary failure in name resolution")), "dns"),
        (_wrapped(ConnectionRefusedError(111, "refused")), "refused"),
        (ValueError("odd"), "probe_error"),
    ],
)
def test_failure_reason_codes(exc: BaseException, reason: str) -> None:
    assert failure_from(exc).reason == reason


def test_certificate_errors_name_the_problem() -> None:
    failure = failure_from(_cert_error(10, "certificate has expired"))
    assert "certificate has expired" in failure.detail
