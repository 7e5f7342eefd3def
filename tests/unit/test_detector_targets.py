"""Unit tests of how configured targets and registered EOs become probe targets."""

from __future__ import annotations

import pickle
from dataclasses import FrozenInstanceError
from typing import Any

import pytest
from pydantic import SecretStr

from services.detector.targets import (
    DOMIBUS_STATUS_PATH,
    As4Signing,
    Endpoint,
    InvalidTarget,
    from_eo,
    from_settings,
    parse_endpoint,
)
from shared.config import DetectorSettings, TargetSettings
from shared.events import Component, EoData


def configured(**overrides: Any) -> TargetSettings:
    values: dict[str, Any] = {"id": "ada-as4", "component": "ada_b2g", "url": "https://b2g.example.lu/as4"}
    values.update(overrides)
    return TargetSettings(**values)


DETECTOR = DetectorSettings(instance_id="t", interval_s=5, timeout_s=2, failure_threshold=3, success_threshold=2)


@pytest.mark.parametrize(
    ("url", "probe", "endpoint"),
    [
        ("https://b2g.example.lu/as4", "as4", Endpoint("https", "b2g.example.lu", 443, "/as4")),
        ("http://127.0.0.1:8080", "http", Endpoint("http", "127.0.0.1", 8080, "/")),
        ("https://NTP.Example.lu/x?y=1", "http", Endpoint("https", "ntp.example.lu", 443, "/x?y=1")),
        ("127.0.0.1:5432", "tcp", Endpoint("tcp", "127.0.0.1", 5432, "/")),
        ("tcp://db.example.lu:5432", "tcp", Endpoint("tcp", "db.example.lu", 5432, "/")),
        ("b2g.example.lu:443", "tls", Endpoint("https", "b2g.example.lu", 443, "/")),
        ("https://b2g.example.lu", "tls", Endpoint("https", "b2g.example.lu", 443, "/")),
        ("http://[::1]:8080/h", "http", Endpoint("http", "::1", 8080, "/h")),
        ("https://x.lu/äs4 msh/%20?a=b c", "as4", Endpoint("https", "x.lu", 443, "/%C3%A4s4%20msh/%20?a=b%20c")),
    ],
)
def test_parse_endpoint(url: str, probe: Any, endpoint: Endpoint) -> None:
    assert parse_endpoint(url, probe) == endpoint


@pytest.mark.parametrize(
    ("url", "probe", "message"),
    [
        ("ftp://x.lu/", "http", "needs a http:// or https:// URL"),
        ("tcp://x.lu:1", "as4", "needs a http:// or https:// URL"),
        ("http://x.lu:80", "tcp", "needs a tcp:// URL"),
        ("tcp://x.lu", "tcp", "needs a port"),
        ("https://user:pw@x.lu/", "as4", "credentials in URL"),
        ("http://:80/", "http", "no host"),
        ("http://x.lu:99999/", "http", "invalid URL"),
    ],
)
def test_parse_endpoint_rejects(url: str, probe: Any, message: str) -> None:
    with pytest.raises(InvalidTarget, match=message):
        parse_endpoint(url, probe)


def test_endpoint_authority_and_host_key() -> None:
    assert Endpoint("https", "b2g.example.lu", 443, "/").authority == "b2g.example.lu"
    assert Endpoint("http", "b2g.example.lu", 8080, "/").authority == "b2g.example.lu:8080"
    assert Endpoint("http", "::1", 80, "/").authority == "[::1]"
    assert Endpoint("https", "b2g.example.lu", 443, "/").host_key == "b2g.example.lu:443"


def test_configured_target_takes_the_detector_defaults() -> None:
    target = from_settings(configured(probe="as4"), DETECTOR)
    assert (target.interval_s, target.timeout_s) == (5, 2)
    assert (target.thresholds.failure, target.thresholds.success, target.thresholds.degraded_latency_ms) == (3, 2, None)
    assert target.receiver is not None and target.receiver.id == "LUCCS"
    assert target.sender is not None and target.sender.id == "luccs-fallback"
    assert target.source == "config" and target.eori is None
    assert target.http.accepts(204) and not target.http.accepts(301)


def test_per_target_overrides() -> None:
    target = from_settings(
        configured(
            probe="http", interval_s=1, timeout_s=0.5, failure_threshold=5, success_threshold=4,
            degraded_latency_ms=800, method="HEAD", expected_status=[200, 401], body_contains="LUCCS",
            ca_file="/ca.pem", client_cert_file="/c.pem", client_key_file="/k.pem",
            username="monitor", password=SecretStr("pw"), as4_to_party_id="ADA-LU",
        ),
        DETECTOR,
    )
    assert (target.interval_s, target.timeout_s) == (1, 0.5)
    assert (target.thresholds.failure, target.thresholds.success, target.thresholds.degraded_latency_ms) == (5, 4, 800)
    assert target.http.method == "HEAD"
    assert target.http.accepts(401) and not target.http.accepts(204)
    assert target.http.body_contains == "LUCCS"
    assert (target.tls.ca_file, target.tls.cert_file, target.tls.key_file) == ("/ca.pem", "/c.pem", "/k.pem")
    assert target.basic_auth == ("monitor", "pw")
    assert target.receiver is not None and target.receiver.id == "ADA-LU"


def test_timeout_never_exceeds_the_interval() -> None:
    assert from_settings(configured(interval_s=1, timeout_s=5), DETECTOR).timeout_s == 1


def test_the_retry_pace_defaults_to_a_fifth_of_the_targets_own_interval() -> None:
    assert from_settings(configured(), DETECTOR).retry_interval_s == 1.0
    assert from_settings(configured(interval_s=60), DETECTOR).retry_interval_s == 12.0
    eo_target = from_eo(eo("https://as4.trader.lu/"), DETECTOR)
    assert eo_target is not None and eo_target.retry_interval_s == 1.0


def test_the_retry_pace_comes_from_the_target_else_the_detector() -> None:
    detector = DetectorSettings(instance_id="t", interval_s=5, retry_interval_s=0.5)
    assert from_settings(configured(), detector).retry_interval_s == 0.5
    assert from_settings(configured(retry_interval_s=2), detector).retry_interval_s == 2
    eo_target = from_eo(eo("https://as4.trader.lu/"), detector)
    assert eo_target is not None and eo_target.retry_interval_s == 0.5


def test_a_retry_pace_slower_than_the_interval_is_rejected() -> None:
    with pytest.raises(InvalidTarget, match=r"retry_interval_s \(2\) must not exceed interval_s \(1\)"):
        from_settings(configured(interval_s=1, retry_interval_s=2), DETECTOR)


def test_domibus_without_a_path_gets_the_monitoring_path() -> None:
    target = from_settings(configured(probe="domibus", url="https://ap.example.lu"), DETECTOR)
    assert target.endpoint.path == DOMIBUS_STATUS_PATH
    url = "https://ap.example.lu/domibus" + DOMIBUS_STATUS_PATH
    custom = from_settings(configured(probe="domibus", url=url), DETECTOR)
    assert custom.endpoint.path == "/domibus" + DOMIBUS_STATUS_PATH


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"id": "eo:LU1"}, "kept for registered EOs"),
        ({"component": "eo_b2g"}, "come from the EO registry"),
        ({"expected_status": [200, 700]}, "HTTP statuses"),
        ({"client_key_file": "/k.pem"}, "client_key_file without client_cert_file"),
        ({"probe": "tcp", "url": "https://x.lu/"}, "tcp://"),
    ],
)
def test_configured_target_rejections(overrides: dict[str, Any], message: str) -> None:
    with pytest.raises(InvalidTarget, match=message):
        from_settings(configured(**overrides), DETECTOR)


def eo(endpoint: str | None) -> EoData:
    return EoData(eori="LU12345678901234", name="Test Trading SARL", as4_endpoint=endpoint)


def test_eo_target_is_an_as4_ping_to_the_eori() -> None:
    target = from_eo(eo("https://as4.trader.lu/msh"), DETECTOR)
    assert target is not None
    assert target.id == "eo:LU12345678901234"
    assert (target.component, target.probe, target.eori, target.source) == (
        Component.EO_B2G, "as4", "LU12345678901234", "registry",
    )
    assert target.receiver is not None
    assert target.receiver.id == "LU12345678901234"
    assert target.receiver.type == "urn:oasis:names:tc:ebcore:partyid-type:eu-customs:EORI"
    assert target.endpoint == Endpoint("https", "as4.trader.lu", 443, "/msh")


def test_eo_without_an_endpoint_has_no_target_and_a_bad_one_is_rejected() -> None:
    assert from_eo(eo(None), DETECTOR) is None
    assert from_eo(eo(""), DETECTOR) is None
    with pytest.raises(InvalidTarget):
        from_eo(eo("mailto:x@y.lu"), DETECTOR)


def test_eo_targets_use_the_detector_wide_tls_files() -> None:
    settings = DetectorSettings(instance_id="t", ca_file="/ca.pem", client_cert_file="/c.pem")
    target = from_eo(eo("https://as4.trader.lu/"), settings)
    assert target is not None
    assert (target.tls.ca_file, target.tls.cert_file) == ("/ca.pem", "/c.pem")


def test_equal_inputs_give_equal_targets() -> None:
    assert from_eo(eo("https://a.lu/"), DETECTOR) == from_eo(eo("https://a.lu/"), DETECTOR)
    assert from_eo(eo("https://a.lu/"), DETECTOR) != from_eo(eo("https://b.lu/"), DETECTOR)


# --- signed AS4 pings ------------------------------------------------------------------------------

SIGNING_DEFAULTS = DETECTOR.model_copy(update={
    "as4_signing": True, "as4_key_file": "/k.pem", "as4_cert_file": "/c.pem", "as4_partner_cert_file": "/ada.pem",
    "as4_key_password": SecretStr("pw"),
})


def test_signing_defaults_come_from_the_detector_and_a_target_replaces_the_trust_pair() -> None:
    inherited = from_settings(configured(probe="as4"), SIGNING_DEFAULTS)
    assert inherited.as4_signing == As4Signing("/k.pem", "/c.pem", partner_cert_file="/ada.pem", key_password="pw")
    assert "pw" not in repr(inherited.as4_signing)
    own = from_settings(configured(probe="as4", as4_trust_ca_file="/ca.pem"), SIGNING_DEFAULTS)
    assert own.as4_signing is not None
    assert (own.as4_signing.partner_cert_file, own.as4_signing.trust_ca_file) == (None, "/ca.pem")
    assert from_settings(configured(probe="as4", as4_signing=False), SIGNING_DEFAULTS).as4_signing is None
    assert from_settings(configured(probe="http"), SIGNING_DEFAULTS).as4_signing is None


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"probe": "http", "as4_signing": True}, "as4 probes only"),
        ({"probe": "as4", "as4_signing": True}, "needs as4_key_file"),
        ({"probe": "as4", "as4_signing": True, "as4_key_file": "/k.pem"}, "needs as4_partner_cert_file or"),
    ],
)
def test_signing_without_what_it_needs_is_refused(overrides: dict[str, Any], message: str) -> None:
    with pytest.raises(InvalidTarget, match=message):
        from_settings(configured(**overrides), DETECTOR)


def test_eo_pings_are_signed_only_with_a_trusted_ca() -> None:
    eo = EoData(eori="LU12345678901234", name="Test Trading SARL", as4_endpoint="https://ap.example/as4")
    pinned = from_eo(eo, SIGNING_DEFAULTS)
    assert pinned is not None and pinned.as4_signing is None  # one partner certificate cannot be every EO's
    by_ca = from_eo(eo, SIGNING_DEFAULTS.model_copy(update={"as4_trust_ca_file": "/ca.pem"}))
    assert by_ca is not None and by_ca.as4_signing is not None
    assert by_ca.as4_signing.trust_ca_file == "/ca.pem" and by_ca.as4_signing.partner_cert_file is None


# --- a target crosses to a probe worker pickled ------------------------------------------------------


def test_a_target_with_every_part_set_survives_pickling_whole() -> None:
    target = from_settings(
        configured(
            probe="as4", interval_s=1, timeout_s=0.5, failure_threshold=5, success_threshold=4,
            degraded_latency_ms=800, ca_file="/ca.pem", client_cert_file="/c.pem", client_key_file="/k.pem",
            username="monitor", password=SecretStr("pw"), as4_to_party_id="ADA-LU", as4_trust_ca_file="/ca.pem",
        ),
        SIGNING_DEFAULTS,
    )
    assert target.as4_signing is not None and target.sender is not None and target.basic_auth is not None
    for protocol in (pickle.HIGHEST_PROTOCOL, pickle.DEFAULT_PROTOCOL, 2):
        copy = pickle.loads(pickle.dumps(target, protocol=protocol))
        assert copy == target and copy is not target
        assert copy.endpoint == target.endpoint and copy.thresholds == target.thresholds
        assert copy.as4_signing == target.as4_signing and copy.tls == target.tls and copy.receiver == target.receiver
    with pytest.raises(FrozenInstanceError):
        copy.id = "changed"
