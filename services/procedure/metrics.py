"""The procedure service's Prometheus series, read at each scrape from the system of record.

Everything here is a gauge or a counter computed from the database (shared by every instance, so any
instance answers the same) or, for EO endpoints and the consumer lag, from the answering process:

- ``luccs_component_state{component}``: 1 up, 0 down, -1 unknown (or nothing decided yet).
- ``luccs_procedures_active{scenario,scope}``: open procedures (every valid pair is present, 0 if none).
- ``luccs_procedures_proposed{scenario,scope}``: proposed procedures awaiting an operator (confirm mode).
- ``luccs_procedure_decisions_total{action,scenario}``: decisions recorded (timeline), since the database began.
- ``luccs_advisory_active{kind}``: 1 while an advisory of the kind (``ntp_unavailable``, ``monitoring_blind``,
  ``certificate_expiring``) is raised.
- ``luccs_eo_endpoints_down``: EOs whose own AS4 endpoint is down now.
- ``luccs_detector_observation_age_seconds{detector_instance}``: age of the newest observation of each
  detector instance the service has heard from.
- ``luccs_procedure_outbox_oldest_unpublished_seconds``: age of the oldest event not yet published (0 if none).
- ``luccs_procedure_consumer_lag_messages{topic}``: availability messages on the broker not handled yet.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Any

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from services.procedure.availability import NATIONAL_COMPONENTS
from services.procedure.domain import Action
from services.procedure.models import AdvisoryRow, ComponentRow, ObservationRow, OutboxRow, ProcedureRow, TimelineRow
from shared.events import AdvisoryKind, Component, ComponentState, ProcedureState, Scenario, Scope
from shared.kafka import EventConsumer

__all__ = ["ProcedureMetrics"]

STATE_VALUE = {ComponentState.UP: 1.0, ComponentState.DOWN: 0.0, ComponentState.UNKNOWN: -1.0}
SCOPES = {
    Scenario.EO_B2G_UNAVAILABLE: Scope.EO,
    Scenario.ADA_B2G_UNAVAILABLE: Scope.NATIONAL,
    Scenario.LUCCS_UNAVAILABLE: Scope.NATIONAL,
}
_ACTIONS = [a.value for a in Action]


def _now() -> datetime:
    return datetime.now(UTC)


class ProcedureMetrics(Collector):
    """Call :meth:`refresh` before each scrape (it reads the database); :meth:`collect` then serves it."""

    def __init__(
        self,
        *,
        registry: CollectorRegistry,
        sessions: async_sessionmaker[AsyncSession],
        eo_endpoints_down: Callable[[], int],
        clock: Callable[[], datetime] = _now,
    ) -> None:
        self._sessions = sessions
        self._eo_endpoints_down = eo_endpoints_down
        self._clock = clock
        self.consumer: EventConsumer[Any] | None = None
        """The availability consumer, once started (its lag is served)."""
        self._components: dict[Component, ComponentState] = {}
        self._procedures: dict[tuple[Scenario, Scope, ProcedureState], int] = {}
        self._decisions: dict[tuple[str, str], int] = {}
        self._decided_up_to = 0  # timeline id already counted into _decisions
        self._advisories: set[str] = set()
        self._detectors: dict[str, datetime] = {}
        self._oldest_unpublished: datetime | None = None
        self._now = clock()
        registry.register(self)

    async def refresh(self) -> None:
        """Read what the series show from the database."""
        async with self._sessions() as session:
            self._components = {r.component: r.state for r in (await session.scalars(select(ComponentRow))).all()}
            self._procedures = {
                (scenario, scope, state): n
                for scenario, scope, state, n in (await session.execute(
                    select(ProcedureRow.scenario, ProcedureRow.scope, ProcedureRow.state, func.count())
                    .where(ProcedureRow.state.in_([ProcedureState.OPEN, ProcedureState.PROPOSED]))
                    .group_by(ProcedureRow.scenario, ProcedureRow.scope, ProcedureRow.state)
                )).all()
            }
            # Decisions are counted once each, incrementally: the timeline only grows.
            counted = (await session.execute(
                select(TimelineRow.kind, TimelineRow.scenario, func.count(), func.max(TimelineRow.id))
                .where(TimelineRow.id > self._decided_up_to, TimelineRow.kind.in_(_ACTIONS))
                .group_by(TimelineRow.kind, TimelineRow.scenario)
            )).all()
            for kind, scenario, n, last in counted:
                self._decisions[(kind, scenario)] = self._decisions.get((kind, scenario), 0) + n
                self._decided_up_to = max(self._decided_up_to, last)
            self._advisories = set((await session.scalars(
                select(AdvisoryRow.kind).where(AdvisoryRow.active.is_(True))
            )).all())
            self._detectors = {
                instance: newest for instance, newest in (await session.execute(
                    select(ObservationRow.detector_instance, func.max(ObservationRow.observed_at))
                    .group_by(ObservationRow.detector_instance)
                )).all()
            }
            self._oldest_unpublished = await session.scalar(
                select(func.min(OutboxRow.created_at)).where(OutboxRow.published_at.is_(None))
            )
        self._now = self._clock()

    def collect(self) -> Iterator[Metric]:
        state = GaugeMetricFamily("luccs_component_state", "State of a national component: 1 up, 0 down, "
                                  "-1 unknown (no fresh observation, or nothing decided yet).", labels=["component"])
        for component in NATIONAL_COMPONENTS:
            state.add_metric([component.value], STATE_VALUE[self._components.get(component, ComponentState.UNKNOWN)])
        yield state
        for name, wanted, text in (
            ("luccs_procedures_active", ProcedureState.OPEN, "Open procedures, by scenario and scope."),
            ("luccs_procedures_proposed", ProcedureState.PROPOSED,
             "Procedures proposed and awaiting an operator's confirmation, by scenario and scope."),
        ):
            family = GaugeMetricFamily(name, text, labels=["scenario", "scope"])
            for scenario, scope in SCOPES.items():
                family.add_metric([scenario.value, scope.value],
                                  self._procedures.get((scenario, scope, wanted), 0))
            yield family
        decisions = CounterMetricFamily(
            "luccs_procedure_decisions",
            "Decisions recorded (propose, open, confirm, update, close, withdraw), by action and scenario.",
            labels=["action", "scenario"],
        )
        for action in Action:
            for scenario in Scenario:
                key = (action.value, scenario.value)
                decisions.add_metric(list(key), self._decisions.get(key, 0))
        yield decisions
        advisories = GaugeMetricFamily("luccs_advisory_active", "1 while an advisory of this kind is raised.",
                                       labels=["kind"])
        for kind in AdvisoryKind:
            advisories.add_metric([kind.value], 1.0 if kind.value in self._advisories else 0.0)
        yield advisories
        yield GaugeMetricFamily("luccs_eo_endpoints_down", "EOs whose own AS4 endpoint is down now.",
                                value=self._eo_endpoints_down())
        detectors = GaugeMetricFamily("luccs_detector_observation_age_seconds",
                                      "Age of the newest observation received from each detector instance.",
                                      labels=["detector_instance"])
        for instance, newest in sorted(self._detectors.items()):
            detectors.add_metric([instance], max(0.0, (self._now - newest).total_seconds()))
        yield detectors
        oldest = self._oldest_unpublished
        yield GaugeMetricFamily("luccs_procedure_outbox_oldest_unpublished_seconds",
                                "Age of the oldest recorded event not yet published (0 when none).",
                                value=max(0.0, (self._now - oldest).total_seconds()) if oldest else 0.0)
        lag = GaugeMetricFamily("luccs_procedure_consumer_lag_messages",
                                "Availability messages on the broker not yet handled by this instance.",
                                labels=["topic"])
        if self.consumer is not None:
            lag.add_metric([self.consumer.topic], self.consumer.stats.lag)
        yield lag
