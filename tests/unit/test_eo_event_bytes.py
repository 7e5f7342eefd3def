"""The registry event of an EO is serialised straight from its values (an import writes 100,000 of them):
byte for byte the JSON of the contract's models, ``CloudEvent[EoData](...).to_bytes()``."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta, timezone
from urllib.parse import urlsplit

import pytest
from pydantic import SecretStr

from services.procedure.registry import SOURCE, eo_event_bytes
from services.procedure.schemas import _url
from shared.events import CloudEvent, EoData, EventType, Language, parse_event

CASES = [
    dict(eori="LU12345678", name="Opérateur «Sàrl»", language=Language.FR, email="ops@eo.example",
         webhook_url="https://hooks.eo.example/1?a=b&c=d", webhook_secret="a-secret-of-enough-length",
         as4_endpoint="https://as4.eo.example/msh", api_key_hash="0123456789abcdef" * 4),
    dict(eori="DE1", name='quote " backslash \\ tab \t nl \n ctl \x01 del \x7f ls \u2028 emoji \U0001f600',
         language=Language.DE, email=None, webhook_url=None, webhook_secret=None, as4_endpoint=None,
         api_key_hash=None),
    dict(eori="LU2", name="empty secret", language=Language.EN, email=None, webhook_url=None, webhook_secret="",
         as4_endpoint=None, api_key_hash="f" * 64),
]


@pytest.mark.parametrize("values", CASES)
@pytest.mark.parametrize("time", [datetime(2026, 12, 1, 9, 5, 7, 123456, tzinfo=UTC),
                                  datetime(2026, 12, 1, 9, 5, 7, tzinfo=UTC),
                                  datetime(2026, 12, 1, 10, 5, 7, tzinfo=timezone(timedelta(hours=1)))])
def test_the_event_bytes_are_those_of_the_contract_models(values: dict[str, object], time: datetime) -> None:
    fast = eo_event_bytes(**values, time=time)  # type: ignore[arg-type]
    event_id = json.loads(fast)["id"]
    secret = values["webhook_secret"]
    model = CloudEvent[EoData](
        id=event_id, source=SOURCE, type=EventType.EO_UPSERTED, subject=values["eori"], time=time,
        data=EoData(**{**values, "webhook_secret": SecretStr(secret) if secret else None}),  # type: ignore[arg-type]
    )
    assert fast == model.to_bytes()
    assert parse_event(fast, EoData) == model


def test_each_event_has_its_own_id() -> None:
    now = datetime.now(UTC)
    ids = {json.loads(eo_event_bytes(**CASES[0], time=now))["id"] for _ in range(100)}  # type: ignore[arg-type]
    assert len(ids) == 100


@pytest.mark.parametrize("url", [
    "https://as4-1.eo.example/msh", "http://x.example", "http://x.example:8080/a?b=c#d", "https://1.2.3.4/",
    "HTTPS://X.example/", "http://[::1]:8080/", "http://user:pw@x.example/", "ftp://x.example/", "http:///p",
    "http://x.example:port/", "https://x.example/ space", "http://a..b/", "http://-/", "mailto:a@b.example",
    "https://x.example?q", "https://x.example#f", "http://[::1/",
])
def test_the_url_shortcut_agrees_with_splitting_the_url(url: str) -> None:
    try:
        parts = urlsplit(url)
        valid = parts.scheme in ("http", "https") and bool(parts.hostname)
    except ValueError:
        valid = False
    if valid:
        assert _url(url) == url
    else:
        with pytest.raises(ValueError, match=r"absolute http|Invalid IPv6"):
            _url(url)
