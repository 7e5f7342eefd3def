"""Unit tests of the detector's use cases: targets from config and registry, results, events, heartbeats."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from services.detector.domain import ProbeResult
from services.detector.metrics import DetectorMetrics
from services.detector.probes import Prober
from services.detector.service import Detector
from services.detector.targets import Target, from_settings
from shared.config import DetectorSettings, TargetSettings
from shared.events import AvailabilityData, CloudEvent, Component, ComponentState, EoData, EventType
from tests.clock import ManualClock

UP = ComponentState.UP
DOWN = ComponentState.DOWN
UNKNOWN = ComponentState.UNKNOWN
EORI = "LU12345678901234"
T0 = datetime(2024, 3, 1, 12, 0, tzinfo=UTC)


def make(
    *, ticks: ManualClock | None = None, **settings: Any
) -> tuple[Detector, list[CloudEvent[AvailabilityData]], CollectorRegistry]:
    values: dict[str, Any] = {"instance_id": "vp-1", "interval_s": 60, "failure_threshold": 2, "success_threshold": 2}
    values.update(settings)
    sent: list[CloudEvent[AvailabilityData]] = []

    async def send(_target_id: str, event: CloudEvent[AvailabilityData]) -> None:
        sent.append(event)

    registry = CollectorRegistry()
    detector = Detector(
        settings=DetectorSettings(**values), prober=Prober(), send=send, metrics=DetectorMetrics.create(registry),
        ticks=ticks,
    )
    return detector, sent, registry


def ada(detector: Detector, **overrides: Any) -> Target:
    values: dict[str, Any] = {"id": "ada-as4", "component": "ada_b2g", "probe": "as4", "url": "https://b2g.lu/as4"}
    values.update(overrides)
    target = from_settings(TargetSettings(**values), detector._settings)
    detector.put(target)
    return target


def result(ok: bool, i: int, **extra: Any) -> ProbeResult:
    return ProbeResult(
        ok=ok, reason="ok" if ok else "refused", finished_at=T0 + timedelta(seconds=i), latency_ms=10.0, **extra
    )


def eo(endpoint: str | None) -> EoData:
    return EoData(eori=EORI, name="Test Trading SARL", as4_endpoint=endpoint)


async def test_a_transition_is_published_as_a_changed_event_with_everything_known() -> None:
    detector, sent, _ = make()
    target = ada(detector)
    detector.record(target, result(True, 1))
    detector.record(target, result(True, 2, cert_expires_at=T0 + timedelta(days=40)))
    assert await detector.latest.flush()
    [event] = sent
    assert event.type == EventType.AVAILABILITY_CHANGED
    assert event.subject == "ada-as4"
    assert event.source == "/luccs-fallback/detector/vp-1"
    data = event.data
    assert (data.target_id, data.component, data.detector_instance, data.probe) == (
        "ada-as4", Component.ADA_B2G, "vp-1", "as4",
    )
    assert (data.state, data.previous_state, data.since, data.observed_at) == (UP, UNKNOWN, T0 + timedelta(seconds=2),
                                                                              T0 + timedelta(seconds=2))
    assert data.cert_expires_at == T0 + timedelta(days=40)
    assert data.eori is None and data.degraded is False


async def test_no_event_until_a_threshold_is_reached() -> None:
    detector, sent, _ = make()
    target = ada(detector)
    detector.record(target, result(False, 1))
    assert await detector.latest.flush()
    assert sent == []


async def test_ebms_errors_travel_with_the_event() -> None:
    detector, sent, _ = make(success_threshold=1)
    target = ada(detector)
    detector.record(target, ProbeResult(True, "ebms_error", T0, 5.0, "EBMS:0103", ebms_error="EBMS:0103"))
    await detector.latest.flush()
    assert (sent[0].data.reason, sent[0].data.ebms_error, sent[0].data.ok) == ("ebms_error", "EBMS:0103", True)


async def test_becoming_degraded_is_published_at_once_as_a_heartbeat() -> None:
    detector, sent, _ = make(degraded_latency_ms=100, failure_threshold=2, success_threshold=1)
    target = ada(detector)

    def slow(i: int) -> ProbeResult:
        return ProbeResult(True, "ok", T0 + timedelta(seconds=i), latency_ms=500.0)

    detector.record(target, slow(1))
    await detector.latest.flush()
    detector.record(target, slow(2))
    await detector.latest.flush()
    assert [(e.type, e.data.state, e.data.degraded) for e in sent] == [
        (EventType.AVAILABILITY_CHANGED, UP, False),
        (EventType.AVAILABILITY_HEARTBEAT, UP, True),
    ]


# --- suspicion: a change on its way travels at once ------------------------------------------------


async def flushed(detector: Detector, sent: list[CloudEvent[AvailabilityData]]) -> list[CloudEvent[AvailabilityData]]:
    """The events one flush publishes."""
    before = len(sent)
    assert await detector.latest.flush()
    return sent[before:]


def suspicion_of(event: CloudEvent[AvailabilityData]) -> tuple[Any, ...]:
    data = event.data
    return event.type, data.state, data.ok, data.suspect, data.streak, data.threshold, data.verdict_by


async def up_target(**settings: Any) -> tuple[Detector, list[CloudEvent[AvailabilityData]], Target]:
    # interval 60 s (retry 12 s derived), timeout 2 s: each missing probe may take 14 s.
    detector, sent, _ = make(failure_threshold=3, success_threshold=2, timeout_s=2, **settings)
    target = ada(detector)
    detector.record(target, result(True, 1))
    detector.record(target, result(True, 2))
    [changed] = await flushed(detector, sent)
    assert suspicion_of(changed) == (EventType.AVAILABILITY_CHANGED, UP, True, False, 2, 2, None)
    return detector, sent, target


async def test_the_first_failure_of_an_up_target_is_published_at_once_as_a_suspect_heartbeat() -> None:
    detector, sent, target = await up_target()
    detector.record(target, result(False, 10))
    [event] = await flushed(detector, sent)
    assert suspicion_of(event) == (
        EventType.AVAILABILITY_HEARTBEAT, UP, False, True, 1, 3, T0 + timedelta(seconds=10 + 2 * 14)
    )
    assert event.data.previous_state is None and event.data.reason == "refused"


async def test_every_probe_of_the_streak_is_published_at_once_and_the_change_ends_the_suspicion() -> None:
    detector, sent, target = await up_target()
    events = []
    for second in (10, 22, 34):
        detector.record(target, result(False, second))
        events += await flushed(detector, sent)
    assert [suspicion_of(e) for e in events] == [
        (EventType.AVAILABILITY_HEARTBEAT, UP, False, True, 1, 3, T0 + timedelta(seconds=10 + 28)),
        (EventType.AVAILABILITY_HEARTBEAT, UP, False, True, 2, 3, T0 + timedelta(seconds=22 + 14)),
        (EventType.AVAILABILITY_CHANGED, DOWN, False, False, 3, 3, None),
    ]
    promised = events[1].data.verdict_by
    assert promised is not None and events[2].data.observed_at <= promised


async def test_a_streak_that_breaks_without_a_change_is_published_at_once_too() -> None:
    detector, sent, target = await up_target()
    detector.record(target, result(False, 10))
    await flushed(detector, sent)
    detector.record(target, result(True, 22))
    [event] = await flushed(detector, sent)
    assert suspicion_of(event) == (EventType.AVAILABILITY_HEARTBEAT, UP, True, False, 1, 2, None)
    detector.record(target, result(True, 82))
    assert await flushed(detector, sent) == [], "agreeing probes wait for the heartbeat, as before"


async def test_the_first_success_of_a_down_target_is_published_at_once_as_suspect() -> None:
    detector, sent, target = await up_target(retry_interval_s=5)
    for second in (10, 15, 20):
        detector.record(target, result(False, second))
    await flushed(detector, sent)
    detector.record(target, result(True, 30))
    [event] = await flushed(detector, sent)
    assert suspicion_of(event) == (
        EventType.AVAILABILITY_HEARTBEAT, DOWN, True, True, 1, 2, T0 + timedelta(seconds=30 + 5 + 2)
    )


async def test_an_unknown_target_publishes_no_suspicion() -> None:
    detector, sent, _ = make(failure_threshold=3)
    target = ada(detector)
    detector.record(target, result(False, 1))
    detector.record(target, result(False, 2))
    assert await flushed(detector, sent) == []


async def test_heartbeats_carry_the_suspicion_fields() -> None:
    detector, sent, target = await up_target()
    detector.record(target, result(False, 10))
    detector.latest.refresh(target.id)  # what the heartbeat loop does
    [event] = await flushed(detector, sent)
    assert event.data.suspect and event.data.verdict_by == T0 + timedelta(seconds=38)


async def test_metrics_count_results_by_reason_and_expose_target_states() -> None:
    detector, _, registry = make(success_threshold=1)
    target = ada(detector)
    detector.record(target, result(True, 1))
    detector.record(target, result(False, 2))
    labels = {"probe": "as4", "component": "ada_b2g"}
    assert registry.get_sample_value("luccs_detector_probe_results_total", {**labels, "reason": "ok"}) == 1
    assert registry.get_sample_value("luccs_detector_probe_results_total", {**labels, "reason": "refused"}) == 1
    assert registry.get_sample_value("luccs_detector_probe_duration_seconds_count", labels) == 2
    assert registry.get_sample_value("luccs_detector_transitions_total", {"component": "ada_b2g", "state": "up"}) == 1


# --- the EO registry ------------------------------------------------------------------------------


async def test_a_registered_endpoint_becomes_an_eo_target() -> None:
    detector, sent, _ = make(success_threshold=1, failure_threshold=1)
    assert detector.on_eo(eo("https://as4.trader.lu/msh")) == "upserted"
    target = detector.targets[f"eo:{EORI}"]
    assert (target.component, target.probe, target.eori) == (Component.EO_B2G, "as4", EORI)
    assert len(detector.scheduler) == 1
    detector.record(target, result(False, 1))
    await detector.latest.flush()
    assert (sent[0].data.component, sent[0].data.eori, sent[0].data.state) == (Component.EO_B2G, EORI, DOWN)


async def test_the_same_registration_again_changes_nothing() -> None:
    detector, _, _ = make()
    detector.on_eo(eo("https://as4.trader.lu/msh"))
    assert detector.on_eo(eo("https://as4.trader.lu/msh")) == "unchanged"


async def test_an_eo_target_id_is_one_string_wherever_the_detector_keys_by_it() -> None:
    detector, _, _ = make()
    detector.on_eo(eo("https://as4.trader.lu/msh"))
    [target] = detector.targets.values()
    # 100,000 EOs: an equal copy of each id in one more map is 6 MiB (bench/README.md, "Memory at scale").
    assert all(key is target.id for key in (*detector._registered, *detector.statuses))


async def test_a_changed_endpoint_keeps_the_state_and_starts_counting_again() -> None:
    detector, _, _ = make()
    detector.on_eo(eo("https://as4.trader.lu/msh"))
    old = detector.targets[f"eo:{EORI}"]
    for i in range(3):
        detector.record(old, result(False, i))
    assert detector.statuses[old.id].state == DOWN
    assert detector.on_eo(eo("https://as4-new.trader.lu/msh")) == "upserted"
    status = detector.statuses[old.id]
    assert (status.state, status.consecutive_failures) == (DOWN, 0)
    assert detector.targets[old.id].url == "https://as4-new.trader.lu/msh"


@pytest.mark.parametrize("how", ["endpoint becomes null", "tombstone"])
async def test_a_removed_endpoint_is_no_longer_probed_nor_published(how: str) -> None:
    detector, sent, _ = make(failure_threshold=1)
    detector.on_eo(eo("https://as4.trader.lu/msh"))
    target = detector.targets[f"eo:{EORI}"]
    detector.record(target, result(False, 1))  # a change is pending
    outcome = detector.on_eo(eo(None)) if how == "endpoint becomes null" else detector.on_eo_removed(EORI)
    assert outcome == "removed"
    assert f"eo:{EORI}" not in detector.targets
    assert len(detector.scheduler) == 0
    detector.record(target, result(False, 2))  # a probe that was still running
    await detector.latest.flush()
    assert sent == []


async def test_an_invalid_endpoint_is_rejected_and_stops_an_earlier_one() -> None:
    detector, _, _ = make()
    detector.on_eo(eo("https://as4.trader.lu/msh"))
    assert detector.on_eo(eo("ftp://as4.trader.lu/")) == "rejected"
    assert detector.targets == {}
    assert detector.on_eo_removed("LU000") == "unknown"
    assert detector.on_eo(eo(None)) == "no_endpoint"


async def test_after_a_replay_eo_targets_missing_from_the_registry_are_dropped() -> None:
    detector, _, _ = make()
    ada(detector)
    detector.on_eo(eo("https://as4.trader.lu/msh"))
    detector.on_eo(EoData(eori="LU999", name="Other", as4_endpoint="https://other.lu/"))
    detector.retain_eos({"LU999"})
    assert sorted(detector.targets) == ["ada-as4", "eo:LU999"]


# --- certificates and heartbeats ------------------------------------------------------------------


async def test_certificate_warnings_are_logged_once_per_level(caplog: pytest.LogCaptureFixture) -> None:
    detector, _, _ = make()
    target = ada(detector)
    caplog.set_level(logging.WARNING, logger="services.detector.service")
    for i, days in enumerate([40, 29, 28, 13, 12, 13, 6, -1]):
        detector.record(target, result(True, i, cert_expires_at=T0 + timedelta(seconds=i, days=days)))
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == 4, warnings
    assert "within 30 days" in warnings[0]
    assert "within 14 days" in warnings[1]
    assert "within 7 days" in warnings[2]
    assert "has expired" in warnings[3]
    assert detector.cert_warning_of(target.id) == 0


async def test_as4_signing_and_partner_certificates_are_warned_apart_and_exported(
    caplog: pytest.LogCaptureFixture,
) -> None:
    detector, _, _ = make()
    target = ada(detector)
    registry = CollectorRegistry()
    DetectorMetrics.create(registry, statuses=detector.view)
    caplog.set_level(logging.WARNING, logger="services.detector.service")
    for i, (ours, theirs) in enumerate([(40, 100), (29, 100), (29, 13), (6, 12)]):
        detector.record(target, result(True, i, signing_cert_expires_at=T0 + timedelta(days=ours),
                                       partner_cert_expires_at=T0 + timedelta(days=theirs)))
    warnings = [r.getMessage() for r in caplog.records]
    assert [("signing" in w, w.split(" within ")[1].split(" ")[0]) for w in warnings] == [
        (True, "30"), (False, "14"), (True, "7"),
    ], warnings
    assert "the partner's AS4 receipt certificate" in warnings[1]
    assert detector.as4_cert_warning_of(target.id) == 7
    assert detector.cert_warning_of(target.id) is None  # the TLS level is its own
    signing = registry.get_sample_value(
        "luccs_detector_as4_cert_expiry_timestamp_seconds", {"target": target.id, "certificate": "signing"}
    )
    assert signing == (T0 + timedelta(days=6)).timestamp()


async def test_heartbeats_republish_every_probed_target() -> None:
    ticks = ManualClock()
    detector, sent, _ = make(heartbeat_s=15, ticks=ticks)
    probed = ada(detector)
    ada(detector, id="never-probed")
    detector.record(probed, result(True, 1))
    beat = asyncio.create_task(detector.heartbeat_loop())
    try:
        await ticks.advance(14.9)
        assert not len(detector.latest), "not before heartbeat_s"
        await ticks.advance(0.1)
        assert len(detector.latest) == 1
    finally:
        beat.cancel()
    await detector.latest.flush()
    assert [(e.type, e.data.target_id, e.data.state) for e in sent] == [
        (EventType.AVAILABILITY_HEARTBEAT, "ada-as4", UNKNOWN)
    ]


async def test_a_national_target_turning_suspect_probes_the_other_channel_at_once() -> None:
    detector, _sent, target = await up_target()
    ntp = from_settings(TargetSettings(id="ntp", component="ntp", probe="http", url="https://ntp.lu/"),
                        detector._settings)
    detector.put(ntp)
    asked: list[str] = []
    detector.scheduler.probe_now = ask(asked)  # type: ignore[method-assign,assignment]
    detector.record(target, result(False, 10))  # ADA B2G's first failure: suspect
    assert asked == ["ntp"]
    detector.record(target, result(False, 11))  # the same streak goes on: NTP was asked already
    assert asked == ["ntp"]
    detector.record(target, result(False, 12))  # down: the verdict, nothing more to corroborate
    detector.record(target, result(True, 13))   # the first success of a down target: suspect again
    assert asked == ["ntp", "ntp"]


async def test_an_eo_endpoint_turning_suspect_probes_nothing_else() -> None:
    detector, _sent, _ = make(failure_threshold=3, success_threshold=1)
    detector.put(from_settings(TargetSettings(id="ntp", component="ntp", url="https://ntp.lu/"), detector._settings))
    assert detector.on_eo(eo("https://as4.trader.lu/msh")) == "upserted"
    eo_target = detector.targets[f"eo:{EORI}"]
    asked: list[str] = []
    detector.scheduler.probe_now = ask(asked)  # type: ignore[method-assign,assignment]
    detector.record(eo_target, result(True, 1))
    detector.record(eo_target, result(False, 2))
    assert asked == []


def ask(asked: list[str]) -> Callable[[str], bool]:
    def probe_now(target_id: str) -> bool:
        asked.append(target_id)
        return True

    return probe_now
