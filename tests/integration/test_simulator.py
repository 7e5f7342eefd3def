"""The simulator against real sockets on loopback: every mode of every kind of endpoint, and the control API."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass

import httpx
import pytest
from lxml import etree

from services.simulator import Mode, NoticeLog, Simulator, layout
from services.simulator.cli import control
from tests.support import free_port

pytestmark = pytest.mark.integration

SOAP12 = "http://www.w3.org/2003/05/soap-envelope"
EBMS = "http://docs.oasis-open.org/ebxml-msg/ebms/v3.0/ns/core/200704/"
NS = {"env": SOAP12, "eb": EBMS}
NAMES = ("control", "ada-as4", "ntp", "receiver", "eo-1")


def user_message(message_id: str) -> bytes:
    return f"""<?xml version="1.0" encoding="UTF-8"?>
<env:Envelope xmlns:env="{SOAP12}" xmlns:eb="{EBMS}">
  <env:Header>
    <eb:Messaging env:mustUnderstand="true">
      <eb:UserMessage>
        <eb:MessageInfo><eb:Timestamp>2026-11-27T08:00:00.000Z</eb:Timestamp>
          <eb:MessageId>{message_id}</eb:MessageId></eb:MessageInfo>
        <eb:PartyInfo>
          <eb:From><eb:PartyId type="urn:oasis:names:tc:ebcore:partyid-type:unregistered">tester</eb:PartyId>
            <eb:Role>{EBMS}initiator</eb:Role></eb:From>
          <eb:To><eb:PartyId type="urn:oasis:names:tc:ebcore:partyid-type:unregistered">LUCCS</eb:PartyId>
            <eb:Role>{EBMS}responder</eb:Role></eb:To>
        </eb:PartyInfo>
        <eb:CollaborationInfo>
          <eb:Service>http://docs.oasis-open.org/ebxml-msg/ebms/v3.0/ns/core/200704/service</eb:Service>
          <eb:Action>http://docs.oasis-open.org/ebxml-msg/ebms/v3.0/ns/core/200704/test</eb:Action>
          <eb:ConversationId>{uuid.uuid4()}</eb:ConversationId>
        </eb:CollaborationInfo>
      </eb:UserMessage>
    </eb:Messaging>
  </env:Header>
  <env:Body/>
</env:Envelope>""".encode()


def parse(body: bytes) -> etree._Element:
    parser = etree.XMLParser(resolve_entities=False, no_network=True, load_dtd=False)
    return etree.fromstring(body, parser)


@dataclass
class Running:
    simulator: Simulator
    ports: dict[str, int]
    client: httpx.AsyncClient

    @property
    def control_url(self) -> str:
        return f"http://127.0.0.1:{self.ports['control']}"

    def url(self, name: str, path: str = "/as4") -> str:
        return f"http://127.0.0.1:{self.ports[name]}{path}"

    async def switch(self, name: str, mode: str) -> httpx.Response:
        return await self.client.post(f"{self.control_url}/control/{name}/{mode}")

    async def ping(self, name: str = "ada-as4", message_id: str | None = None, timeout: float = 5.0) -> httpx.Response:
        return await self.client.post(
            self.url(name), content=user_message(message_id or f"{uuid.uuid4()}@test"),
            headers={"Content-Type": "application/soap+xml; charset=UTF-8"}, timeout=timeout,
        )


@pytest.fixture
async def sim() -> AsyncIterator[Running]:
    ports = {name: free_port() for name in NAMES}
    while len(set(ports.values())) < len(ports):
        ports = {name: free_port() for name in NAMES}
    simulator = Simulator(plan=layout(eos=1, ports=ports), notices=NoticeLog(keep=50))
    task = asyncio.create_task(simulator.serve())
    async with httpx.AsyncClient(timeout=5) as client:
        running = Running(simulator, ports, client)
        try:
            async with asyncio.timeout(10):
                while not simulator.started:
                    assert not task.done(), task.exception()
                    await asyncio.sleep(0.02)
            yield running
        finally:
            simulator.exit()
            await asyncio.wait_for(task, timeout=10)


async def test_ok_answers_a_receipt_for_the_message_sent(sim: Running) -> None:
    for name in ("ada-as4", "eo-1"):
        message_id = f"{uuid.uuid4()}@test"
        answer = await sim.ping(name, message_id)
        assert answer.status_code == 200
        assert answer.headers["content-type"].startswith("application/soap+xml")
        envelope = parse(answer.content)
        signal = envelope.find("env:Header/eb:Messaging/eb:SignalMessage", NS)
        assert signal is not None
        assert signal.findtext("eb:MessageInfo/eb:RefToMessageId", namespaces=NS) == message_id
        assert signal.findtext("eb:MessageInfo/eb:MessageId", namespaces=NS) not in (None, message_id)
        assert signal.find("eb:Receipt", NS) is not None
        assert signal.find("eb:Error", NS) is None


async def test_refuse_closes_the_port_and_ok_reopens_it(sim: Running) -> None:
    # A keep-alive connection open before the outage is dropped too.
    assert (await sim.ping()).status_code == 200
    answer = await sim.switch("ada-as4", "refuse")
    assert answer.status_code == 200
    assert answer.json()["endpoints"][0] | {"mode": "refuse", "listening": False} == answer.json()["endpoints"][0]
    with pytest.raises(ConnectionRefusedError):
        await asyncio.open_connection("127.0.0.1", sim.ports["ada-as4"])
    with pytest.raises(httpx.ConnectError):
        await sim.ping()
    # The other endpoints are not affected.
    assert (await sim.client.get(sim.url("ntp", "/"))).status_code == 200

    assert (await sim.switch("ada-as4", "ok")).status_code == 200
    assert (await sim.ping()).status_code == 200


async def test_hang_accepts_and_never_answers(sim: Running) -> None:
    await sim.switch("ada-as4", "hang")
    _, writer = await asyncio.open_connection("127.0.0.1", sim.ports["ada-as4"])  # accepted
    writer.close()
    await writer.wait_closed()
    with pytest.raises(httpx.ReadTimeout):
        await sim.ping(timeout=0.5)
    view = (await sim.client.get(f"{sim.control_url}/control/ada-as4")).json()
    assert view["mode"] == "hang"
    await sim.switch("ada-as4", "ok")
    assert (await sim.ping()).status_code == 200


async def test_503(sim: Running) -> None:
    await sim.switch("ada-as4", "503")
    assert (await sim.ping()).status_code == 503
    await sim.switch("ntp", "503")
    assert (await sim.client.get(sim.url("ntp", "/"))).status_code == 503


async def test_maintenance_is_an_html_page_with_200(sim: Running) -> None:
    await sim.switch("ada-as4", "maintenance")
    answer = await sim.ping()
    assert answer.status_code == 200
    assert answer.headers["content-type"].startswith("text/html")
    assert "Maintenance" in answer.text
    assert "Envelope" not in answer.text
    await sim.switch("ntp", "maintenance")
    portal = await sim.client.get(sim.url("ntp", "/"))
    assert portal.status_code == 200
    assert "Maintenance" in portal.text
    assert "National Trader Portal" not in portal.text


async def test_ok_portal_page(sim: Running) -> None:
    portal = await sim.client.get(sim.url("ntp", "/"))
    assert portal.status_code == 200
    assert portal.headers["content-type"].startswith("text/html")
    assert "National Trader Portal" in portal.text


async def test_ebms_error_is_a_soap_error_signal_with_500(sim: Running) -> None:
    await sim.switch("eo-1", "ebms-error")
    message_id = f"{uuid.uuid4()}@test"
    answer = await sim.ping("eo-1", message_id)
    assert answer.status_code == 500
    assert answer.headers["content-type"].startswith("application/soap+xml")
    signal = parse(answer.content).find("env:Header/eb:Messaging/eb:SignalMessage", NS)
    assert signal is not None
    error = signal.find("eb:Error", NS)
    assert error is not None
    assert error.get("errorCode") == "EBMS:0103"
    assert error.get("refToMessageInError") == message_id
    assert signal.find("eb:Receipt", NS) is None


async def test_hostile_xml_is_not_expanded(sim: Running) -> None:
    body = (
        b'<?xml version="1.0"?><!DOCTYPE env:Envelope [<!ENTITY x SYSTEM "file:///etc/passwd">]>'
        b'<env:Envelope xmlns:env="' + SOAP12.encode() + b'"><env:Body>&x;</env:Body></env:Envelope>'
    )
    answer = await sim.client.post(sim.url("ada-as4"), content=body,
                                   headers={"Content-Type": "application/soap+xml"})
    assert answer.status_code == 500
    assert b"root:" not in answer.content
    error = parse(answer.content).find(".//eb:Error", NS)
    assert error is not None
    assert error.get("errorCode") == "EBMS:0009"


async def test_receiver_records_every_post(sim: Running) -> None:
    event = {
        "specversion": "1.0", "id": "evt-1", "type": "luccs.procedure.opened",
        "data": {"scenario": "ADA_B2G_UNAVAILABLE", "eori": None, "language": "fr",
                 "subject": "Procédure de secours", "message": "Utilisez le NTP."},
    }
    answer = await sim.client.post(
        sim.url("receiver", "/hooks/fr"), content=json.dumps(event).encode(),
        headers={"Content-Type": "application/json", "Idempotency-Key": "idem-1",
                 "X-Luccs-Signature": "t=1,v1=abc"},
    )
    assert answer.status_code == 200
    await sim.switch("receiver", "503")
    assert (await sim.client.post(sim.url("receiver", "/hooks/en"), content=b"not json")).status_code == 503

    notices = (await sim.client.get(f"{sim.control_url}/receiver/notices")).json()
    assert notices["total"] == 2
    first, second = notices["items"]
    assert first | {
        "method": "POST", "path": "/hooks/fr", "status": 200, "idempotency_key": "idem-1",
        "signature": "t=1,v1=abc", "event_id": "evt-1", "event_type": "luccs.procedure.opened",
        "scenario": "ADA_B2G_UNAVAILABLE", "language": "fr", "subject": "Procédure de secours",
        "message": "Utilisez le NTP.",
    } == first
    assert second["path"] == "/hooks/en"
    assert second["status"] == 503
    assert second["event_type"] is None
    only_fr = (await sim.client.get(f"{sim.control_url}/receiver/notices", params={"path": "/hooks/fr"})).json()
    assert [n["event_id"] for n in only_fr["items"]] == ["evt-1"]


async def test_control_lists_endpoints_and_rejects_unknown_ones(sim: Running) -> None:
    listing = (await sim.client.get(f"{sim.control_url}/control")).json()
    assert {e["name"]: e["url"] for e in listing["endpoints"]} == {
        "ada-as4": sim.url("ada-as4"), "ntp": sim.url("ntp", "/"), "receiver": sim.url("receiver", "/"),
        "eo-1": sim.url("eo-1"),
    }
    assert {e["mode"] for e in listing["endpoints"]} == {"ok"}
    assert set(listing["modes"]) == {m.value for m in Mode}
    assert (await sim.switch("nowhere", "ok")).status_code == 404
    assert (await sim.switch("ntp", "broken")).status_code == 422

    answer = await sim.switch("all", "refuse")
    assert {e["listening"] for e in answer.json()["endpoints"]} == {False}
    await sim.switch("all", "ok")
    assert (await sim.ping("eo-1")).status_code == 200


async def test_simulator_ctl(sim: Running, capsys: pytest.CaptureFixture[str]) -> None:
    # The command is synchronous: run it beside the loop that serves the control API.
    assert await asyncio.to_thread(control, ["ntp", "refuse", "--url", sim.control_url]) == 0
    assert "ntp" in capsys.readouterr().out
    assert not sim.simulator.endpoint("ntp").listening
    assert await asyncio.to_thread(control, ["--url", sim.control_url]) == 0
    table = capsys.readouterr().out
    assert "refuse" in table
    assert sim.url("eo-1") in table
    assert await asyncio.to_thread(control, ["nowhere", "ok", "--url", sim.control_url]) == 1
    assert "no endpoint" in capsys.readouterr().err
