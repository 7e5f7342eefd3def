"""Who probes what: rendezvous hashing over detector instances (``vantage_points``), the live set from heartbeats,
and the detector following it (EO endpoints move, configured targets stay everywhere)."""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import Any

import pytest
from aiokafka import ConsumerRecord
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry

from services.detector.metrics import DetectorMetrics
from services.detector.peers import heartbeat_instance
from services.detector.probes import Prober
from services.detector.service import Detector
from services.detector.targets import from_settings
from services.detector.vantage import Membership, owners, owns
from shared.config import DetectorSettings, TargetSettings
from shared.events import EoData

names = st.text(alphabet="abcdefghij-0123456789", min_size=1, max_size=12)
instances = st.sets(names, min_size=1, max_size=9)
keys = st.lists(st.from_regex(r"eo:LU[0-9]{1,15}", fullmatch=True), min_size=1, max_size=30, unique=True)
ks = st.integers(min_value=1, max_value=5)


@given(instances, keys, ks)
def test_every_key_has_exactly_k_owners_among_the_instances(members: set[str], targets: list[str], k: int) -> None:
    for key in targets:
        chosen = owners(key, members, k)
        assert len(chosen) == len(set(chosen)) == min(k, len(members))
        assert set(chosen) <= members
        # Each instance decides for itself, and the instances agree with one another.
        assert {m for m in members if owns(m, key, members, k)} == set(chosen)


@given(instances, keys, ks, names)
def test_an_instance_leaving_moves_only_its_own_share(members: set[str], targets: list[str], k: int,
                                                      extra: str) -> None:
    members = members | {extra}
    after = members - {extra}
    for key in targets:
        before, now = set(owners(key, members, k)), set(owners(key, after, k))
        assert before - {extra} <= now  # nobody else loses a target
        assert len(now - before) == (1 if extra in before and len(members) > k else 0)  # its place, taken once


@given(instances, keys, ks, names)
def test_an_instance_joining_takes_only_what_it_now_owns(members: set[str], targets: list[str], k: int,
                                                         joining: str) -> None:
    joined = members | {joining}
    for key in targets:
        before, now = set(owners(key, members, k)), set(owners(key, joined, k))
        assert now - before <= {joining}  # no target moves between the others
        assert len(before - now) <= 1


def test_the_shares_are_even() -> None:
    members = ["dt-a", "dt-b", "dt-c"]
    counts = Counter(m for i in range(3000) for m in owners(f"eo:LU{i}", members, 2))
    assert sum(counts.values()) == 6000
    assert all(1800 <= n <= 2200 for n in counts.values()), counts  # 2000 each, about 1% standard deviation


def test_membership_keeps_an_instance_while_its_heartbeats_are_fresh() -> None:
    members = Membership(self_id="dt-a", timeout_s=10)
    assert members.live(now=100) == {"dt-a"}
    members.seen("dt-b", 95)
    members.seen("dt-c", 99)
    members.seen("dt-b", 90)  # an older heartbeat read late changes nothing
    assert members.live(now=100) == {"dt-a", "dt-b", "dt-c"}
    assert members.live(now=105) == {"dt-a", "dt-b", "dt-c"}
    assert members.live(now=105.5) == {"dt-a", "dt-c"}
    members.seen("dt-b", 106)  # back
    assert members.live(now=107) == {"dt-a", "dt-b", "dt-c"}
    assert members.live(now=200) == {"dt-a"}  # never without itself


def _record(key: bytes | None, value: bytes | None) -> ConsumerRecord[bytes, bytes]:
    return ConsumerRecord(topic="t", partition=0, offset=0, timestamp=0, timestamp_type=0, key=key, value=value,
                          checksum=None, serialized_key_size=0, serialized_value_size=0, headers=())


def test_instances_are_read_from_national_heartbeats_only() -> None:
    body = b'{"type": "luccs.availability.heartbeat", "data": {"detector_instance": "dt-b"}}'
    assert heartbeat_instance(_record(b"ada-as4", body)) == "dt-b"
    assert heartbeat_instance(_record(b"eo:LU1", body)) is None  # not parsed at all
    assert heartbeat_instance(_record(b"ada-as4", b"not json")) is None
    assert heartbeat_instance(_record(b"ada-as4", b'{"data": {"detector_instance": 3}}')) is None
    assert heartbeat_instance(_record(b"ada-as4", b"[]")) is None
    assert heartbeat_instance(_record(None, body)) is None


def _detector(instance: str, vantage_points: int = 2) -> Detector:
    async def send(*_: Any) -> None:
        return None

    settings_ = DetectorSettings(instance_id=instance, vantage_points=vantage_points)
    return Detector(settings=settings_, prober=Prober(), send=send,
                    metrics=DetectorMetrics.create(CollectorRegistry()))


def _eo(i: int) -> EoData:
    return EoData(eori=f"LU{i:012d}", name=f"EO {i}", as4_endpoint=f"https://ap{i % 7}.example.eu/as4/{i}")


async def test_each_eo_endpoint_is_probed_by_k_of_the_live_instances_as_they_come_and_go() -> None:
    eos = 40
    fleet = {name: _detector(name) for name in ("dt-a", "dt-b", "dt-c", "dt-d")}
    ntp = TargetSettings(id="ntp", component="ntp", probe="http", url="https://ntp.example.lu/")
    for detector in fleet.values():
        detector.put(from_settings(ntp, detector._settings))
        for i in range(eos):
            assert detector.on_eo(_eo(i)) == "upserted"  # the live instances are not known yet: every one probes

    def probers() -> Counter[str]:
        return Counter(t for name in live for t in fleet[name].targets)

    for live in ({"dt-a", "dt-b", "dt-c"}, {"dt-a", "dt-c"}, {"dt-a"}, {"dt-a", "dt-b", "dt-c", "dt-d"}):
        for name in live:
            fleet[name].set_vantage_members(frozenset(live))
        counts = probers()
        assert counts["ntp"] == len(live)  # national targets: every instance
        assert {counts[f"eo:LU{i:012d}"] for i in range(eos)} == {min(2, len(live))}
    # A registry change reaches only the owners; an EO without an endpoint is dropped everywhere.
    outcomes = Counter(fleet[name].on_eo(_eo(eos)) for name in live)
    assert outcomes == {"upserted": 2, "elsewhere": 2}
    assert probers()[f"eo:LU{eos:012d}"] == 2
    for name in live:
        fleet[name].on_eo(EoData(eori=f"LU{0:012d}", name="EO 0", as4_endpoint=None))
        fleet[name].retain_eos({f"LU{i:012d}" for i in range(1, eos + 1)})
    assert probers()[f"eo:LU{0:012d}"] == 0
    for name in live:  # and it stays dropped when the shares move again
        fleet[name].set_vantage_members(frozenset({"dt-a"}))
    assert "eo:LU000000000000" not in fleet["dt-a"].targets
    assert len([t for t in fleet["dt-a"].targets if t.startswith("eo:")]) == eos


@settings(max_examples=25, deadline=None)
@given(st.lists(st.sets(st.sampled_from(["dt-a", "dt-b", "dt-c", "dt-d", "dt-e"]), min_size=1), min_size=1,
                max_size=6), st.integers(min_value=1, max_value=3))
def test_k_probers_per_eo_whatever_the_sequence_of_live_sets(sequence: list[set[str]], k: int) -> None:
    async def scenario() -> None:  # the scheduler lives on a loop (hypothesis drives sync tests only)
        fleet = {name: _detector(name, vantage_points=k) for name in ("dt-a", "dt-b", "dt-c", "dt-d", "dt-e")}
        for detector in fleet.values():
            for i in range(12):
                detector.on_eo(_eo(i))
        for live in sequence:
            for name in live:
                fleet[name].set_vantage_members(frozenset(live))
            counts = Counter(t for name in live for t in fleet[name].targets)
            assert {counts[f"eo:LU{i:012d}"] for i in range(12)} == {min(k, len(live))}

    asyncio.run(scenario())


def test_vantage_timeout_must_exceed_the_heartbeat() -> None:
    with pytest.raises(ValueError, match="vantage_timeout_s"):
        DetectorSettings(vantage_points=2, heartbeat_s=15, vantage_timeout_s=15)
    assert DetectorSettings(vantage_points=0, heartbeat_s=15, vantage_timeout_s=15).vantage_timeout_s == 15
