"""Unit tests of webhook signatures (shared/signing.py)."""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shared.signing import IDEMPOTENCY_HEADER, SIGNATURE_HEADER, sign, verify

SECRET = "whsec-2f7c1e"
BODY = b'{"type":"luccs.procedure.opened","data":{"procedure_id":"proc-1"}}'
TS = 1_709_294_400
FAST = settings(max_examples=100, deadline=None, database=None)


def test_header_names() -> None:
    assert SIGNATURE_HEADER == "X-Luccs-Signature"
    assert IDEMPOTENCY_HEADER == "Idempotency-Key"


def test_header_format() -> None:
    assert re.fullmatch(rf"t={TS},v1=[0-9a-f]{{64}}", sign(SECRET, BODY, TS))


def test_v1_is_the_hmac_sha256_of_timestamp_dot_body() -> None:
    # Literal, from `printf '1709294400.<BODY>' | openssl dgst -sha256 -hmac whsec-2f7c1e`: not the formula again.
    expected = "4dfa43931fc781b8ebacf4f7ab579cdd5a4ae967ac86911d400273c11fde290b"
    assert sign(SECRET, BODY, TS) == f"t={TS},v1={expected}"


def test_known_vector() -> None:
    # `printf '1.{}' | openssl dgst -sha256 -hmac key`
    assert sign("key", b"{}", 1) == "t=1,v1=1ba6b8171186efc613e8bcc0cbdab2748f24984d7c5a84faa2637afa0e40d224"


def test_round_trip() -> None:
    assert verify(SECRET, BODY, sign(SECRET, BODY, TS), now=TS) is True


def test_wrong_secret_is_rejected() -> None:
    assert verify("whsec-other", BODY, sign(SECRET, BODY, TS), now=TS) is False


@pytest.mark.parametrize("tampered", [BODY + b" ", BODY.replace(b"proc-1", b"proc-2"), b"", BODY[:-1]])
def test_tampered_body_is_rejected(tampered: bytes) -> None:
    assert verify(SECRET, tampered, sign(SECRET, BODY, TS), now=TS) is False


def test_timestamp_is_covered_by_the_signature() -> None:
    header = sign(SECRET, BODY, TS)
    replayed = header.replace(f"t={TS}", f"t={TS + 60}")
    assert verify(SECRET, BODY, replayed, now=TS + 60) is False


@pytest.mark.parametrize(("delta", "accepted"), [(0, True), (299, True), (300, True), (301, False), (3600, False)])
def test_timestamp_tolerance_with_the_default_of_five_minutes(delta: int, accepted: bool) -> None:
    header = sign(SECRET, BODY, TS)
    assert verify(SECRET, BODY, header, now=TS + delta) is accepted  # a stale signature
    assert verify(SECRET, BODY, header, now=TS - delta) is accepted  # a signature from the future


def test_custom_tolerance() -> None:
    header = sign(SECRET, BODY, TS)
    assert verify(SECRET, BODY, header, now=TS + 30, tolerance_s=10) is False
    assert verify(SECRET, BODY, header, now=TS + 30, tolerance_s=30) is True


VALID_V1 = sign(SECRET, BODY, TS).split("v1=", 1)[1]


@pytest.mark.parametrize(
    "header",
    [
        "",
        "garbage",
        f"v1={VALID_V1}",  # no timestamp
        f"t={TS}",  # no signature
        f"t=yesterday,v1={VALID_V1}",
        f"t={TS};v1={VALID_V1}",  # wrong separator
        f"t={TS},v1=",
        f"t={TS},v1=deadbeef",
        f"t={TS},v0={VALID_V1}",
        f"t={TS},v1={VALID_V1.upper()}",
        f"t={TS},v1={VALID_V1},extra",
    ],
)
def test_malformed_headers_are_rejected(header: str) -> None:
    assert verify(SECRET, BODY, header, now=TS) is False


def test_header_parts_may_come_in_any_order() -> None:
    assert verify(SECRET, BODY, f"v1={VALID_V1},t={TS}", now=TS) is True


def test_non_ascii_signature_is_rejected_not_raised() -> None:
    assert verify(SECRET, BODY, f"t={TS},v1=\u00e9{VALID_V1[1:]}", now=TS) is False


@FAST
@given(secret=st.text(min_size=1, max_size=40), body=st.binary(max_size=200), ts=st.integers(0, 2**33))
def test_round_trip_property(secret: str, body: bytes, ts: int) -> None:
    header = sign(secret, body, ts)
    assert verify(secret, body, header, now=ts) is True
    assert verify(secret, body + b"x", header, now=ts) is False
    assert verify(secret + "x", body, header, now=ts) is False
