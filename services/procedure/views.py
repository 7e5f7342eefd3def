"""Response bodies of the procedure service API: what each route answers, as published in /openapi.json."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from shared.events import (
    AdvisoryKind,
    CertificateExpiry,
    Component,
    ComponentState,
    Language,
    Origin,
    ProcedureState,
    Scenario,
    Scope,
)
from shared.paging import Page

__all__ = [
    "AdvisoryView", "ApiKeyIssued", "ComponentStatus", "EoCreated", "EoPage", "EoReportResult", "EoView",
    "EvidenceView", "InstanceView", "LeaderView", "NoteAdded", "ProcedureDetail", "ProcedurePage",
    "ProcedureView", "StatusView", "TimelineEntryView",
]


class ProcedureView(BaseModel):
    procedure_id: str
    scenario: Scenario
    scope: Scope = Field(description="national (every EO) or eo (one EO, scenario 1)")
    eori: str | None = Field(description="The EO of a scenario-1 procedure; null for a national one")
    state: ProcedureState
    origin: Origin = Field(description="Who started it: detected, eo_report, operator or planned")
    auto_close: bool = Field(description="The probes close it when the channel is back")
    reason: str
    created_at: datetime
    opened_at: datetime | None = Field(description="null while proposed")
    closed_at: datetime | None
    updated_at: datetime
    maintenance_id: str | None = Field(description="The maintenance window that opened it (origin planned)")


class ProcedurePage(Page[ProcedureView]):
    pass


class EvidenceView(BaseModel):
    """An observation that justified a decision (or a component's current state)."""

    model_config = ConfigDict(extra="allow")

    target_id: str
    detector_instance: str
    state: ComponentState
    observed_at: datetime
    reason: str


class TimelineEntryView(BaseModel):
    at: datetime
    kind: str = Field(description="open, update, close, propose, confirm, dismiss, note, broadcast, ...")
    scenario: Scenario
    previous_scenario: Scenario | None
    reason: str
    actor: str = Field(description="system, or who did it (e.g. operator:alice, eo:LU123)")
    event_id: str | None = Field(description="The CloudEvent it published, if any")
    evidence: list[EvidenceView]


class ProcedureDetail(ProcedureView):
    timeline: list[TimelineEntryView] = Field(description="The audit trail, oldest first")


class ComponentStatus(BaseModel):
    component: Component
    state: ComponentState
    since: datetime | None = Field(description="When it entered its state; null if never recorded")
    evidence: list[EvidenceView]


class AdvisoryView(BaseModel):
    advisory_id: str
    kind: AdvisoryKind
    components: list[str]
    reason: str
    raised_at: datetime
    certificate: CertificateExpiry | None = Field(
        None, description="The certificate a certificate_expiring advisory is about (null for other kinds)")


class LeaderView(BaseModel):
    instance_id: str
    since: datetime
    epoch: int = Field(description="Goes up at every takeover (the fencing token)")


class InstanceView(BaseModel):
    id: str
    role: Literal["leader", "standby"]


class StatusView(BaseModel):
    components: list[ComponentStatus] = Field(description="The national components")
    eo_endpoints_down: list[str] = Field(description="EORIs whose AS4 endpoint is down (those the caller may read)")
    procedures: list[ProcedureView] = Field(description="Active (open or proposed) procedures the caller may read")
    advisories: list[AdvisoryView] = Field(description="Active advisories (e.g. NTP unavailable, monitoring blind)")
    leader: LeaderView | None = Field(None, description="The instance that leads; null while the lease has run out")
    instance: InstanceView | None = Field(None, description="The instance that answered")


class NoteAdded(BaseModel):
    status: Literal["noted"]


class EoReportResult(BaseModel):
    result: str = Field(description="open, close, ... (the decision taken), or 'no change'")
    detail: str | None = Field(None, description="With 'no change': why")
    procedure: ProcedureView | None = Field(None, description="The procedure opened or closed")


class EoView(BaseModel):
    """An EO as the API shows it: never the webhook secret, never the API key."""

    eori: str
    name: str
    language: Language
    email: str | None
    webhook_url: str | None
    has_webhook_secret: bool
    as4_endpoint: str | None
    created_at: datetime
    updated_at: datetime


class EoCreated(EoView):
    api_key: str = Field(description="The EO's API key: shown this once, stored hashed")


class EoPage(Page[EoView]):
    pass


class ApiKeyIssued(BaseModel):
    eori: str
    api_key: str = Field(description="The new API key: shown this once; the old one no longer works")
