"""Unit tests of the message contracts (shared/events.py)."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from pydantic import BaseModel, SecretStr

from shared.events import (
    AvailabilityData,
    AvailabilityEvent,
    CloudEvent,
    Component,
    ComponentState,
    DeadLetterData,
    DeadLetterEvent,
    DeliveryChannel,
    DeliveryData,
    DeliveryEvent,
    DeliveryStatus,
    EoData,
    EoEvent,
    EventType,
    Evidence,
    InvalidEvent,
    Language,
    ProcedureData,
    ProcedureEvent,
    ProcedureState,
    Scenario,
    Scope,
    parse_event,
)

T = datetime(2024, 3, 1, 12, 0, 30, 123000, tzinfo=UTC)
SECRET = "whsec-9b1f2c3d4e5f"


def availability() -> AvailabilityData:
    return AvailabilityData(
        target_id="ada-as4-1",
        component=Component.ADA_B2G,
        detector_instance="detector-a",
        state=ComponentState.DOWN,
        previous_state=ComponentState.UP,
        since=T,
        observed_at=T + timedelta(seconds=1),
        probe="as4",
        ok=False,
        reason="timeout",
        detail="no answer within 2s",
        latency_ms=2000.0,
    )


def procedure_data() -> ProcedureData:
    return ProcedureData(
        procedure_id="proc-1",
        scenario=Scenario.LUCCS_UNAVAILABLE,
        previous_scenario=Scenario.ADA_B2G_UNAVAILABLE,
        scope=Scope.NATIONAL,
        state=ProcedureState.OPEN,
        reason="ADA B2G (AS4) and NTP are both unavailable",
        opened_at=T,
        evidence=[
            Evidence(
                target_id="ntp-1",
                component=Component.NTP,
                detector_instance="detector-b",
                state=ComponentState.DOWN,
                observed_at=T,
                reason="http_503",
            )
        ],
    )


def eo_data() -> EoData:
    return EoData(
        eori="LU0000000001",
        name="Trader S.A.",
        language=Language.DE,
        email="ops@trader.example",
        webhook_url="https://trader.example/hook",
        webhook_secret=SecretStr(SECRET),
        as4_endpoint="https://trader.example/as4",
    )


def delivery_data() -> DeliveryData:
    return DeliveryData(
        delivery_id="del-1",
        event_id="evt-1",
        procedure_id="proc-1",
        eori="LU0000000001",
        channel=DeliveryChannel.WEBHOOK,
        recipient="https://trader.example/hook",
        attempt=2,
        status=DeliveryStatus.RETRYING,
        http_status=503,
        error="Service Unavailable",
        at=T,
    )


def dead_letter_data() -> DeadLetterData:
    return DeadLetterData(
        source_topic="luccs.availability.v1",
        partition=2,
        offset=1234,
        consumer_group="procedure",
        key="YWRhLWFzNC0x",
        value="bm90IGpzb24=",
        reason="schema validation failed: <root>: Invalid JSON",
    )


ENVELOPES: dict[type[BaseModel], type[CloudEvent[Any]]] = {
    AvailabilityData: AvailabilityEvent,
    ProcedureData: ProcedureEvent,
    EoData: EoEvent,
    DeliveryData: DeliveryEvent,
    DeadLetterData: DeadLetterEvent,
}

ROUND_TRIPS: list[tuple[BaseModel, EventType]] = [
    (availability(), EventType.AVAILABILITY_CHANGED),
    (availability(), EventType.AVAILABILITY_HEARTBEAT),
    (procedure_data(), EventType.PROCEDURE_PROPOSED),
    (procedure_data(), EventType.PROCEDURE_OPENED),
    (procedure_data(), EventType.PROCEDURE_UPDATED),
    (procedure_data(), EventType.PROCEDURE_CLOSED),
    (eo_data(), EventType.EO_UPSERTED),
    (delivery_data(), EventType.DELIVERY_RECORDED),
    (dead_letter_data(), EventType.DEADLETTER_RECORDED),
]


@pytest.mark.parametrize(("data", "event_type"), ROUND_TRIPS, ids=[f"{type(d).__name__}-{t}" for d, t in ROUND_TRIPS])
def test_round_trip(data: BaseModel, event_type: EventType) -> None:
    event = ENVELOPES[type(data)](source="/luccs/test", type=event_type.value, subject="subj-1", data=data)
    raw = event.to_bytes()
    parsed = parse_event(raw, type(data))
    assert parsed == event
    assert type(parsed.data) is type(data)
    assert parsed.data == data
    assert parsed.id == event.id
    assert parsed.type == event_type.value
    assert parsed.time == event.time


def test_envelope_is_cloudevents_1_0_json() -> None:
    event = CloudEvent[AvailabilityData](
        source="/luccs/detector/a", type=EventType.AVAILABILITY_CHANGED.value, data=availability()
    )
    document = json.loads(event.to_bytes())
    assert document["specversion"] == "1.0"
    assert document["datacontenttype"] == "application/json"
    assert document["type"] == "luccs.availability.changed"
    assert document["source"] == "/luccs/detector/a"
    assert document["id"]
    assert datetime.fromisoformat(document["time"]).tzinfo is not None
    assert document["data"]["component"] == "ada_b2g"
    assert document["data"]["state"] == "down"


def test_each_event_gets_its_own_id() -> None:
    a = CloudEvent[AvailabilityData](source="/s", type=EventType.AVAILABILITY_CHANGED.value, data=availability())
    b = CloudEvent[AvailabilityData](source="/s", type=EventType.AVAILABILITY_CHANGED.value, data=availability())
    assert a.id != b.id


def test_non_utc_offsets_survive_the_round_trip() -> None:
    cet = timezone(timedelta(hours=1))
    data = availability().model_copy(update={"observed_at": datetime(2024, 3, 1, 13, 0, tzinfo=cet)})
    event = CloudEvent[AvailabilityData](source="/s", type=EventType.AVAILABILITY_CHANGED.value, data=data)
    parsed = parse_event(event.to_bytes(), AvailabilityData)
    assert parsed.data.observed_at == datetime(2024, 3, 1, 12, 0, tzinfo=UTC)


# --- invalid events ---------------------------------------------------------------------------


def _valid_availability_document() -> dict[str, Any]:
    event = CloudEvent[AvailabilityData](source="/s", type=EventType.AVAILABILITY_CHANGED.value, data=availability())
    document: dict[str, Any] = json.loads(event.to_bytes())
    return document


def _raw(document: Any) -> bytes:
    return json.dumps(document).encode()


def test_the_valid_document_used_below_parses() -> None:
    parsed = parse_event(_raw(_valid_availability_document()), AvailabilityData)
    assert parsed.data.target_id == "ada-as4-1"


@pytest.mark.parametrize("raw", [b"not json at all", b'{"specversion": ', b"\xff\xfe\x00", b""])
def test_non_json_bytes_are_invalid(raw: bytes) -> None:
    with pytest.raises(InvalidEvent) as info:
        parse_event(raw, AvailabilityData)
    assert "json" in str(info.value).lower()


@pytest.mark.parametrize("document", [[1, 2, 3], "a string", 42, None, True])
def test_json_that_is_not_an_object_is_invalid(document: Any) -> None:
    with pytest.raises(InvalidEvent) as info:
        parse_event(_raw(document), AvailabilityData)
    assert "<root>" in str(info.value)


def test_missing_data_is_invalid() -> None:
    document = _valid_availability_document()
    del document["data"]
    with pytest.raises(InvalidEvent) as info:
        parse_event(_raw(document), AvailabilityData)
    message = str(info.value)
    assert "data" in message
    assert "required" in message.lower()


@pytest.mark.parametrize("field", ["source", "type", "data.target_id", "data.state", "data.since"])
def test_missing_required_fields_are_named(field: str) -> None:
    document = _valid_availability_document()
    container = document["data"] if field.startswith("data.") else document
    del container[field.removeprefix("data.")]
    with pytest.raises(InvalidEvent, match=field.replace(".", r"\.")):
        parse_event(_raw(document), AvailabilityData)


@pytest.mark.parametrize("version", ["0.3", "1.1", "", 1.0])
def test_wrong_specversion_is_invalid(version: Any) -> None:
    document = _valid_availability_document()
    document["specversion"] = version
    with pytest.raises(InvalidEvent, match="specversion"):
        parse_event(_raw(document), AvailabilityData)


@pytest.mark.parametrize("path", [("data", "since"), ("data", "observed_at"), ("time",)])
def test_naive_datetimes_are_invalid(path: tuple[str, ...]) -> None:
    document = _valid_availability_document()
    container = document
    for key in path[:-1]:
        container = container[key]
    container[path[-1]] = "2024-03-01T12:00:00"
    with pytest.raises(InvalidEvent) as info:
        parse_event(_raw(document), AvailabilityData)
    message = str(info.value)
    assert ".".join(path) in message
    assert "timezone" in message.lower()


@pytest.mark.parametrize(
    ("data_model", "event_type"),
    [
        (AvailabilityData, EventType.PROCEDURE_OPENED),
        (AvailabilityData, EventType.EO_UPSERTED),
        (AvailabilityData, "com.example.something"),
    ],
)
def test_wrong_event_type_for_the_model_is_invalid(data_model: type[BaseModel], event_type: str) -> None:
    document = _valid_availability_document()
    document["type"] = str(event_type)
    with pytest.raises(InvalidEvent) as info:
        parse_event(_raw(document), data_model)
    message = str(info.value)
    assert "unexpected event type" in message
    assert str(event_type) in message
    assert data_model.__name__ in message


@pytest.mark.parametrize(
    ("data", "wrong_type"),
    [
        (procedure_data(), EventType.AVAILABILITY_CHANGED),
        (eo_data(), EventType.PROCEDURE_OPENED),
        (delivery_data(), EventType.DEADLETTER_RECORDED),
        (dead_letter_data(), EventType.DELIVERY_RECORDED),
    ],
)
def test_every_model_refuses_the_event_types_of_others(data: BaseModel, wrong_type: EventType) -> None:
    event = ENVELOPES[type(data)](source="/s", type=wrong_type.value, data=data)
    with pytest.raises(InvalidEvent, match="unexpected event type"):
        parse_event(event.to_bytes(), type(data))


@pytest.mark.parametrize(
    ("field", "value"),
    [("component", "mainframe"), ("state", "sideways"), ("previous_state", "DOWN ")],
)
def test_invalid_enum_values_are_invalid(field: str, value: str) -> None:
    document = _valid_availability_document()
    document["data"][field] = value
    with pytest.raises(InvalidEvent, match=rf"data\.{field}"):
        parse_event(_raw(document), AvailabilityData)


def test_invalid_scenario_in_a_procedure_event_is_invalid() -> None:
    event = CloudEvent[ProcedureData](source="/s", type=EventType.PROCEDURE_OPENED.value, data=procedure_data())
    document = json.loads(event.to_bytes())
    document["data"]["scenario"] = "SCENARIO_4"
    with pytest.raises(InvalidEvent, match=r"data\.scenario"):
        parse_event(_raw(document), ProcedureData)


def test_data_of_another_model_is_invalid() -> None:
    with pytest.raises(InvalidEvent, match="data"):
        parse_event(_raw(_valid_availability_document()), ProcedureData)


def test_negative_latency_and_zero_attempt_are_invalid() -> None:
    document = _valid_availability_document()
    document["data"]["latency_ms"] = -1
    with pytest.raises(InvalidEvent, match=r"data\.latency_ms"):
        parse_event(_raw(document), AvailabilityData)
    delivery = json.loads(
        CloudEvent[DeliveryData](source="/s", type=EventType.DELIVERY_RECORDED.value, data=delivery_data()).to_bytes()
    )
    delivery["data"]["attempt"] = 0
    with pytest.raises(InvalidEvent, match=r"data\.attempt"):
        parse_event(_raw(delivery), DeliveryData)


def test_invalid_event_is_a_value_error() -> None:
    assert issubclass(InvalidEvent, ValueError)


def test_unknown_data_fields_are_ignored_and_extension_attributes_kept() -> None:
    document = _valid_availability_document()
    document["data"]["added_in_a_later_minor_version"] = 1
    document["traceparent"] = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    parsed = parse_event(_raw(document), AvailabilityData)
    assert not hasattr(parsed.data, "added_in_a_later_minor_version")
    assert parsed.model_extra == {"traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"}


def test_parsed_events_are_immutable() -> None:
    parsed = parse_event(_raw(_valid_availability_document()), AvailabilityData)
    with pytest.raises(ValueError, match="frozen"):
        parsed.data.state = ComponentState.UP  # type: ignore[misc]


# --- EoData webhook secret --------------------------------------------------------------------


def test_eo_secret_is_hidden_from_repr_and_str() -> None:
    eo = eo_data()
    event = CloudEvent[EoData](source="/s", type=EventType.EO_UPSERTED.value, data=eo)
    for text in (repr(eo), str(eo), repr(event), str(event), str(eo.model_dump())):
        assert SECRET not in text
    assert "LU0000000001" in repr(eo)  # the repr is not empty, just masked


def test_eo_secret_is_in_the_json_for_the_notifier() -> None:
    eo = eo_data()
    assert json.loads(eo.model_dump_json())["webhook_secret"] == SECRET
    event = CloudEvent[EoData](source="/s", type=EventType.EO_UPSERTED.value, data=eo)
    assert json.loads(event.to_bytes())["data"]["webhook_secret"] == SECRET
    parsed = parse_event(event.to_bytes(), EoData)
    assert parsed.data.webhook_secret is not None
    assert parsed.data.webhook_secret.get_secret_value() == SECRET


def test_eo_without_secret_serialises_null() -> None:
    eo = EoData(eori="LU0000000009", name="No Hook S.A.")
    document = json.loads(eo.model_dump_json())
    assert document["webhook_secret"] is None
    assert document["language"] == "fr"


# --- a guest on a shared topic: maintenance announcements on the procedures topic ---------------------------


@pytest.mark.parametrize("raw", [
    b"not json", b"[]", b'{"type": "luccs.unknown.thing", "data": {}}', b'{"specversion": "1.0"}',
    b'{"type": "luccs.procedure.opened", "data": {}}',
])
def test_the_guest_leaves_everything_but_its_own_types_to_the_topics_own_consumers(raw: bytes) -> None:
    from shared.events import ForeignEvent, MaintenanceData, claims

    assert not claims(MaintenanceData, raw)
    with pytest.raises(ForeignEvent):
        parse_event(raw, MaintenanceData)
    assert not claims(MaintenanceData, None)  # a tombstone: the procedure consumer dead-letters it, once


def test_the_guest_dead_letters_a_broken_message_of_its_own_type_and_the_owner_skips_it() -> None:
    from shared.events import ForeignEvent, MaintenanceData, claims

    raw = b'{"specversion": "1.0", "id": "x", "source": "/t", "type": "luccs.maintenance.scheduled", "data": {}}'
    assert claims(MaintenanceData, raw)
    with pytest.raises(InvalidEvent, match="schema validation failed") as caught:
        parse_event(raw, MaintenanceData)
    assert not isinstance(caught.value, ForeignEvent)
    with pytest.raises(ForeignEvent):
        parse_event(raw, ProcedureData)


def test_the_owner_dead_letters_an_unknown_type() -> None:
    raw = b'{"specversion": "1.0", "id": "x", "source": "/t", "type": "luccs.unknown.thing", "data": {}}'
    with pytest.raises(InvalidEvent) as caught:
        parse_event(raw, ProcedureData)
    from shared.events import ForeignEvent

    assert not isinstance(caught.value, ForeignEvent)


def test_the_event_types_on_the_wire_are_the_contracts_names() -> None:
    # PRODUCT.md sections 4 and 4b name these; an enum member renamed by mistake must not change the wire.
    contract = {
        "luccs.procedure.proposed", "luccs.procedure.opened", "luccs.procedure.updated", "luccs.procedure.closed",
        "luccs.procedure.broadcast", "luccs.maintenance.scheduled", "luccs.maintenance.changed",
        "luccs.maintenance.cancelled", "luccs.maintenance.reminder",
    }
    assert contract <= {t.value for t in EventType}
    event = CloudEvent[ProcedureData](source="/s", type=EventType.PROCEDURE_OPENED, data=procedure_data())
    assert json.loads(event.to_bytes())["type"] == "luccs.procedure.opened"
    parsed = parse_event(event.to_bytes(), ProcedureData)
    assert type(parsed.type) is EventType and parsed.type == EventType.PROCEDURE_OPENED
