"""Request bodies of the procedure service API, validated at the edge (a bad body is a 422, never a 500)."""

from __future__ import annotations

import re
from datetime import datetime
from typing import Annotated, Literal, Self
from urllib.parse import urlsplit

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, SecretStr, model_validator

from shared.events import EORI_PATTERN, BroadcastAuthor, Language, MaintainedComponent, MaintenanceState, Scenario
from shared.paging import Page
from shared.text import is_unicode

EORI = re.compile(EORI_PATTERN)
_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")


def _eori(value: str) -> str:
    value = value.strip().upper()
    if not EORI.fullmatch(value):
        raise ValueError("an EORI is a 2-letter country code and up to 15 letters or digits, e.g. LU12345678")
    return value


_PLAIN_URL = re.compile(r"https?://[A-Za-z0-9.-]+(?::[0-9]{1,5})?(?:[/?#]\S*)?")
"""The common shape of a URL, accepted without splitting it (a bulk import checks two per EO); anything
else goes through :func:`urllib.parse.urlsplit`, which would accept this shape too (http(s), a host)."""


def _url(value: str) -> str:
    if _PLAIN_URL.fullmatch(value):
        return value
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError("must be an absolute http(s) URL")
    return value


def _email(value: str) -> str:
    if not _EMAIL.fullmatch(value):
        raise ValueError("not an e-mail address")
    return value


def _strip(value: object) -> object:
    return value.strip() if isinstance(value, str) else value


Eori = Annotated[str, BeforeValidator(_strip), Field(max_length=17), AfterValidator(_eori)]
Url = Annotated[str, Field(max_length=2000), AfterValidator(_url)]
Email = Annotated[str, Field(max_length=320), AfterValidator(_email)]
Secret = Annotated[SecretStr, Field(min_length=16, max_length=256)]
Text = Annotated[str, BeforeValidator(_strip), Field(min_length=1, max_length=2000)]


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")

    @model_validator(mode="after")
    def _valid_unicode(self) -> Self:
        """Refuse a string that is not valid Unicode: JSON may carry a lone surrogate (``"\\udce9"``), which no
        database stores and no event encodes (a registry import of such a line failed as a whole, with a 500)."""
        for name, value in self:
            if not _unicode(value):
                raise ValueError(f"{name}: not valid Unicode text (it holds a lone surrogate)")
        return self


def _unicode(value: object) -> bool:
    if isinstance(value, SecretStr):
        value = value.get_secret_value()
    if isinstance(value, str):
        return is_unicode(value)
    if isinstance(value, (list, tuple, set, frozenset)):
        return all(_unicode(item) for item in value)
    if isinstance(value, dict):
        return all(_unicode(key) and _unicode(item) for key, item in value.items())
    if isinstance(value, BaseModel):
        return all(_unicode(item) for _, item in value)
    return True


class EoCreate(_Body):
    eori: Eori
    name: Annotated[str, BeforeValidator(_strip), Field(min_length=1, max_length=300)]
    language: Language = Language.FR
    email: Email | None = None
    webhook_url: Url | None = None
    webhook_secret: Secret | None = Field(None, description="HMAC key for X-Luccs-Signature; at least 16 chars.")
    as4_endpoint: Url | None = None


class EoPatch(_Body):
    """Only the fields given change; null clears an optional field."""

    name: Annotated[str, BeforeValidator(_strip), Field(min_length=1, max_length=300)] | None = None
    language: Language | None = None
    email: Email | None = None
    webhook_url: Url | None = None
    webhook_secret: Secret | None = None
    as4_endpoint: Url | None = None


class EoReport(_Body):
    eori: Eori
    status: Literal["down", "up"]
    detail: Annotated[str, Field(max_length=2000)] | None = None


class Declare(_Body):
    scenario: Scenario
    reason: Text
    eori: Eori | None = None
    auto_close: bool = Field(False, description="Let the probes close it when the channel is back.")


class Reason(_Body):
    reason: Text


class Note(_Body):
    text: Text


def _every_language(texts: dict[str, str]) -> dict[str, str]:
    unknown = sorted(set(texts) - {lang.value for lang in Language})
    if unknown:
        raise ValueError(f"unknown language(s) {', '.join(unknown)}: a text is given in fr, en and de")
    missing = [lang.value for lang in Language if lang.value not in texts]
    if missing:
        raise ValueError(f"the text is missing in {', '.join(missing)}: every EO reads it in its own language, "
                         "so fr, en and de are all needed")
    return texts


Texts = Annotated[dict[str, Text], AfterValidator(_every_language)]


class BroadcastBody(_Body):
    """A message of the Servicedesk or the Bureau to every EO a procedure concerns."""

    text: Texts = Field(
        ..., description="The message in fr, en and de (all three required).", examples=[
            {"fr": "Le bureau est joignable au ...", "en": "The office can be reached at ...",
             "de": "Das Amt ist erreichbar unter ..."}])
    author: BroadcastAuthor = Field(..., description="Who speaks: servicedesk or bureau.")


class BroadcastSent(BaseModel):
    """A broadcast accepted: its event is on its way to every EO the procedure concerns."""

    broadcast_id: str
    procedure_id: str
    event_id: str = Field(..., description="Id of the luccs.procedure.broadcast CloudEvent (Idempotency-Key base).")
    author: BroadcastAuthor
    sent_at: datetime
    scope: str = Field(..., description="national (every EO) or eo (the one EO of a scenario-1 procedure).")
    eori: str | None


def _aware(value: datetime) -> datetime:
    if value.tzinfo is None:
        raise ValueError("needs a timezone, e.g. 2026-12-05T20:00:00Z")
    return value


When = Annotated[datetime, AfterValidator(_aware)]


class MaintenanceCreate(_Body):
    component: MaintainedComponent = Field(..., description="ada_b2g, ntp or luccs (both).")
    starts_at: When
    ends_at: When
    reason: Text
    message: Texts | None = Field(None, description="Words to EOs in fr, en and de (all three, or none).")


class MaintenancePatch(_Body):
    """Only the fields given change. While the window is active only ``ends_at`` (and the words) may change."""

    starts_at: When | None = None
    ends_at: When | None = None
    reason: Text | None = None
    message: Texts | None = None


class MaintenanceView(BaseModel):
    maintenance_id: str
    component: MaintainedComponent
    starts_at: datetime
    ends_at: datetime
    state: MaintenanceState
    reason: str
    message: dict[str, str] | None
    procedure_id: str | None = Field(..., description="The procedure the window opened (or joined) at its start.")
    overran: bool = Field(..., description="Still unavailable at its end: its procedure continued as detected.")
    reminders_sent_s: list[int] = Field(..., description="Lead times whose reminder went out.")
    created_at: datetime
    updated_at: datetime


class MaintenanceList(Page[MaintenanceView]):
    pass
