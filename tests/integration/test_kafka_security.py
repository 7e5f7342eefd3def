"""TLS and SASL towards a real broker: every client of the services connects as ``[kafka]`` says.

One private broker for the module (kafka.sh on free ports, its own LUCCS_VAR_DIR under a tmp dir), with
three listeners besides the KRaft controller: PLAINTEXT (kafka.sh's readiness probe), SSL that requires
a client certificate (mutual TLS), and SASL_SSL with PLAIN and SCRAM-SHA-256/512 users. The certificates
come from trustme as PEM; the broker reads them as PEM key and trust stores. The shared test broker is
not touched.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
import trustme
from aiokafka import AIOKafkaConsumer, ConsumerRecord
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat, load_pem_private_key
from fastapi import FastAPI
from pydantic import SecretStr

from services.detector.app import create_app
from services.notifier.registry import RegistryCatchUp
from shared.config import KafkaSettings, SaslMechanism, Settings
from shared.events import (
    AvailabilityData,
    CloudEvent,
    Component,
    ComponentState,
    EoData,
    EventType,
    Language,
    parse_event,
)
from shared.kafka import EventConsumer, KafkaAccessDenied, Publisher, connection_options, ensure_topics
from tests.integration.test_broker_script import Broker

pytestmark = pytest.mark.integration

# user, password per mechanism; SCRAM users are created when kafka.sh formats the storage.
USERS: dict[str, tuple[str, str]] = {
    "PLAIN": ("alice", "alice-secret"),
    "SCRAM-SHA-256": ("bob", "bob-secret"),
    "SCRAM-SHA-512": ("carol", "carol-secret"),
}
JAAS = {
    "plain": "org.apache.kafka.common.security.plain.PlainLoginModule required "
    + " ".join(f'user_{user}="{password}"' for user, password in [USERS["PLAIN"]])
    + ";",
    "scram-sha-256": "org.apache.kafka.common.security.scram.ScramLoginModule required;",
    "scram-sha-512": "org.apache.kafka.common.security.scram.ScramLoginModule required;",
}


@dataclass
class SecureBroker:
    broker: Broker
    ssl_port: int
    sasl_ssl_port: int
    ca: Path  # signs the broker's and the client's certificates
    other_ca: Path  # signs nothing of this broker
    client_cert: Path
    client_key: Path


def _pkcs8(pem: bytes) -> bytes:
    """Kafka's PEM key store reads PKCS#8 keys only; trustme writes the traditional OpenSSL form."""
    key = load_pem_private_key(pem, None)
    return key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption())


@pytest.fixture(scope="module")
def secure_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SecureBroker]:
    root = tmp_path_factory.mktemp("secure-kafka")
    pki = root / "pki"
    pki.mkdir()
    ca = trustme.CA()
    server = ca.issue_cert("127.0.0.1", "localhost")
    client = ca.issue_cert("luccs-client")
    ca.cert_pem.write_to_path(str(pki / "ca.pem"))
    trustme.CA().cert_pem.write_to_path(str(pki / "other-ca.pem"))
    (pki / "server.pem").write_bytes(
        _pkcs8(server.private_key_pem.bytes()) + b"".join(blob.bytes() for blob in server.cert_chain_pems)
    )
    client.cert_chain_pems[0].write_to_path(str(pki / "client.crt"))
    client.private_key_pem.write_to_path(str(pki / "client.key"))

    broker = Broker(root / "var", extra_ports=2)
    ssl_port, sasl_ssl_port = broker.extra_ports
    listeners = {
        "PLAINTEXT": broker.port, "CONTROLLER": broker.controller_port, "SSL": ssl_port, "SASL_SSL": sasl_ssl_port,
    }
    extra = root / "security.properties"
    extra.write_text(
        "\n".join([
            "listeners=" + ",".join(f"{name}://127.0.0.1:{port}" for name, port in listeners.items()),
            "advertised.listeners="
            + ",".join(f"{name}://127.0.0.1:{port}" for name, port in listeners.items() if name != "CONTROLLER"),
            "listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT,SSL:SSL,SASL_SSL:SASL_SSL",
            "ssl.keystore.type=PEM",
            f"ssl.keystore.location={pki / 'server.pem'}",
            "ssl.truststore.type=PEM",
            f"ssl.truststore.location={pki / 'ca.pem'}",
            "listener.name.ssl.ssl.client.auth=required",
            "sasl.enabled.mechanisms=PLAIN,SCRAM-SHA-256,SCRAM-SHA-512",
            *(f"listener.name.sasl_ssl.{mechanism}.sasl.jaas.config={jaas}" for mechanism, jaas in JAAS.items()),
        ])
        + "\n",
        encoding="utf-8",
    )
    broker.env["KAFKA_EXTRA_PROPERTIES"] = str(extra)
    broker.env["KAFKA_SCRAM_USERS"] = " ".join(
        f"{mechanism}=[name={user},password={password}]"
        for mechanism, (user, password) in USERS.items()
        if mechanism.startswith("SCRAM")
    )
    try:
        started = broker.run("start")
        assert started.returncode == 0, started.stdout + started.stderr
        yield SecureBroker(
            broker=broker, ssl_port=ssl_port, sasl_ssl_port=sasl_ssl_port, ca=pki / "ca.pem",
            other_ca=pki / "other-ca.pem", client_cert=pki / "client.crt", client_key=pki / "client.key",
        )
    finally:
        broker.run("stop", timeout=60)


def sasl_ssl(secure: SecureBroker, prefix: str, mechanism: SaslMechanism, **overrides: Any) -> KafkaSettings:
    user, password = USERS[mechanism]
    values: dict[str, Any] = {
        "bootstrap_servers": f"127.0.0.1:{secure.sasl_ssl_port}", "topic_prefix": prefix,
        "security_protocol": "SASL_SSL", "ssl_cafile": str(secure.ca),
        "sasl_mechanism": mechanism, "sasl_username": user, "sasl_password": SecretStr(password),
    }
    values.update(overrides)
    return KafkaSettings(**values)


def mutual_tls(secure: SecureBroker, prefix: str, **overrides: Any) -> KafkaSettings:
    values: dict[str, Any] = {
        "bootstrap_servers": f"127.0.0.1:{secure.ssl_port}", "topic_prefix": prefix, "security_protocol": "SSL",
        "ssl_cafile": str(secure.ca), "ssl_certfile": str(secure.client_cert), "ssl_keyfile": str(secure.client_key),
    }
    values.update(overrides)
    return KafkaSettings(**values)


def _availability(target_id: str) -> CloudEvent[AvailabilityData]:
    now = datetime.now(UTC)
    return CloudEvent[AvailabilityData](
        source="/tests", type=EventType.AVAILABILITY_CHANGED, subject=target_id,
        data=AvailabilityData(
            target_id=target_id, component=Component.ADA_B2G, detector_instance="t", state=ComponentState.DOWN,
            previous_state=ComponentState.UP, since=now, observed_at=now, probe="http", ok=False, reason="refused",
        ),
    )


async def round_trip(settings: KafkaSettings) -> None:
    """Topics created, one event published by a Publisher and handled by an EventConsumer, all over ``settings``."""
    await ensure_topics(settings, timeout_s=20)
    publisher = Publisher(settings, client_id="it-security")
    await publisher.start()
    received: asyncio.Queue[CloudEvent[AvailabilityData] | None] = asyncio.Queue()

    async def handler(event: CloudEvent[AvailabilityData] | None, _record: ConsumerRecord[bytes, bytes]) -> None:
        await received.put(event)

    consumer = EventConsumer(
        settings=settings, topic=settings.availability_topic, group_id=f"{settings.topic_prefix}.it",
        data_model=AvailabilityData, handler=handler, publisher=publisher,
    )
    task = asyncio.create_task(consumer.run())
    try:
        sent = _availability("ada-1")
        await publisher.publish(settings.availability_topic, sent, key="ada-1")
        got = await asyncio.wait_for(received.get(), timeout=20)
        assert got is not None
        assert (got.id, got.data) == (sent.id, sent.data)
        assert consumer.stats.processed == 1
        assert consumer.stats.dead_lettered == 0
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await publisher.stop()


def test_the_extra_properties_replace_the_generated_keys(secure_broker: SecureBroker) -> None:
    lines = secure_broker.broker.props.read_text(encoding="utf-8").splitlines()
    assert len([line for line in lines if line.startswith("listeners=")]) == 1
    assert len([line for line in lines if line.startswith("listener.security.protocol.map=")]) == 1
    assert f"SASL_SSL://127.0.0.1:{secure_broker.sasl_ssl_port}" in next(
        line for line in lines if line.startswith("advertised.listeners=")
    )


@pytest.mark.parametrize("mechanism", ["SCRAM-SHA-512", "SCRAM-SHA-256", "PLAIN"])
async def test_round_trip_over_sasl_ssl(
    secure_broker: SecureBroker, topic_prefix: str, mechanism: SaslMechanism
) -> None:
    await round_trip(sasl_ssl(secure_broker, topic_prefix, mechanism))


async def test_round_trip_over_mutual_tls(secure_broker: SecureBroker, topic_prefix: str) -> None:
    await round_trip(mutual_tls(secure_broker, topic_prefix))


async def test_a_wrong_password_is_refused_at_once_with_a_clear_error(
    secure_broker: SecureBroker, topic_prefix: str
) -> None:
    settings = sasl_ssl(secure_broker, topic_prefix, "SCRAM-SHA-512", sasl_password=SecretStr("not-carols"))
    started = time.monotonic()
    with pytest.raises(KafkaAccessDenied) as info:
        await asyncio.wait_for(ensure_topics(settings, timeout_s=60), timeout=20)
    assert time.monotonic() - started < 10, "a refused login is not retried until the timeout"
    message = str(info.value)
    where = f"Kafka at 127.0.0.1:{secure_broker.sasl_ssl_port}"
    assert f"{where} refused the SASL SCRAM-SHA-512 login of 'carol'" in message
    assert "invalid credentials" in message
    assert "check kafka.sasl_username, kafka.sasl_password" in message
    assert "not-carols" not in message

    # The service's other clients say the same at their start.
    with pytest.raises(KafkaAccessDenied, match="refused the SASL SCRAM-SHA-512 login"):
        await asyncio.wait_for(Publisher(settings, client_id="it-security").start(), timeout=20)
    with pytest.raises(KafkaAccessDenied, match="refused the SASL SCRAM-SHA-512 login"):
        await asyncio.wait_for(Publisher(settings, client_id="it-security", expire_after_s=5).start(), timeout=20)
    dead_letters = Publisher(sasl_ssl(secure_broker, topic_prefix, "PLAIN"), client_id="it-security")
    await dead_letters.start()
    try:
        plain = sasl_ssl(secure_broker, topic_prefix, "PLAIN", sasl_password=SecretStr("not-alices"))
        consumer = EventConsumer(
            settings=plain, topic=plain.availability_topic, group_id=f"{topic_prefix}.it",
            data_model=AvailabilityData, handler=lambda _event, _record: asyncio.sleep(0), publisher=dead_letters,
        )
        with pytest.raises(KafkaAccessDenied, match="Invalid username or password"):
            await asyncio.wait_for(consumer.run(), timeout=20)
    finally:
        await dead_letters.stop()


async def test_a_broker_certificate_from_another_ca_is_refused(secure_broker: SecureBroker, topic_prefix: str) -> None:
    for settings in (
        mutual_tls(secure_broker, topic_prefix, ssl_cafile=str(secure_broker.other_ca)),
        sasl_ssl(secure_broker, topic_prefix, "PLAIN", ssl_cafile=str(secure_broker.other_ca)),
    ):
        started = time.monotonic()
        with pytest.raises(KafkaAccessDenied) as info:
            await asyncio.wait_for(ensure_topics(settings, timeout_s=60), timeout=20)
        assert time.monotonic() - started < 10
        assert "the broker's TLS certificate is not trusted (unable to get local issuer certificate)" in str(info.value)
        assert "check kafka.ssl_cafile" in str(info.value)


async def test_without_a_client_certificate_the_mutual_tls_listener_stays_closed(
    secure_broker: SecureBroker, topic_prefix: str
) -> None:
    # TLS 1.3: the broker's refusal arrives after the handshake, as a closed connection, which cannot be
    # told apart from a broker going away: retried, but only until the timeout, and the reason is given.
    settings = mutual_tls(secure_broker, topic_prefix, ssl_certfile=None, ssl_keyfile=None)
    with pytest.raises(ConnectionError) as info:
        await asyncio.wait_for(ensure_topics(settings, timeout_s=2), timeout=20)
    assert f"Connection at 127.0.0.1:{secure_broker.ssl_port} closed" in str(info.value)


@contextlib.asynccontextmanager
async def running(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://detector") as client:
            yield client


async def test_the_detector_and_the_notifier_registry_connect_over_sasl_ssl(
    secure_broker: SecureBroker, topic_prefix: str, tmp_path: Path
) -> None:
    kafka = sasl_ssl(secure_broker, topic_prefix, "SCRAM-SHA-256")
    await ensure_topics(kafka)
    publisher = Publisher(kafka, client_id="it-security")
    await publisher.start()
    try:
        eori = "LU12345678901234"
        await publisher.publish(kafka.eos_topic, CloudEvent[EoData](
            source="/tests", type=EventType.EO_UPSERTED, subject=eori,
            data=EoData(eori=eori, name="Test Trading SARL", language=Language.FR),
        ), key=eori)
    finally:
        await publisher.stop()

    # The notifier's start-up catch-up (a consumer and an admin client): one EO message to read.
    catch_up = RegistryCatchUp(settings=kafka, group_id=f"{topic_prefix}.notifier.eos")
    await catch_up.prepare(timeout_s=20)
    assert not catch_up.done.is_set()

    # The detector: topics, its producer and its EO registry follower, all from settings.kafka; it
    # probes a TCP target (the broker's plaintext port) and publishes the target's state.
    settings = Settings(data_dir=tmp_path, kafka=kafka, detector={
        "instance_id": "it-secure", "interval_s": 0.2, "timeout_s": 1.0, "failure_threshold": 1,
        "success_threshold": 1, "heartbeat_s": 1.0,
        "targets": [{"id": "broker", "component": "ntp", "probe": "tcp",
                     "url": f"tcp://127.0.0.1:{secure_broker.broker.port}"}],
    })
    async with running(create_app(settings)) as client:
        async with asyncio.timeout(20):
            while (ready := await client.get("/readyz")).status_code != 200:
                await asyncio.sleep(0.1)
        assert ready.json() == {"status": "ready"}
        consumer = AIOKafkaConsumer(kafka.availability_topic, **connection_options(kafka),
                                    auto_offset_reset="earliest")
        await consumer.start()
        try:
            async with asyncio.timeout(20):
                record = await consumer.getone()
        finally:
            await consumer.stop()
        data = parse_event(record.value, AvailabilityData).data
        assert (data.target_id, data.state, data.detector_instance) == ("broker", ComponentState.UP, "it-secure")
