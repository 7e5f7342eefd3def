"""``luccs_fanout_deliveries{procedure_id,status}``: the progress of each active fan-out, read at each scrape.

A fan-out is active while its procedure is open or proposed, or while any of its deliveries is not
settled yet (pending or retrying, e.g. the closing notices). Each active fan-out has one series per
status (``pending``, ``retrying``, ``delivered``, ``dead``; 0 where none): their sum is what was
planned. Advisory notices (to the Servicedesk) are not procedures and are not shown.
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CollectorRegistry
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from sqlalchemy import exists, func, or_, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from services.notifier.models import DeliveryRow, KnownProcedureRow
from shared.events import DeliveryStatus, ProcedureState

__all__ = ["FanoutMetrics"]

_UNSETTLED = [DeliveryStatus.PENDING, DeliveryStatus.RETRYING]
_ACTIVE = [ProcedureState.OPEN, ProcedureState.PROPOSED]


class FanoutMetrics(Collector):
    """Call :meth:`refresh` before each scrape (it reads the database); :meth:`collect` then serves it."""

    def __init__(self, *, registry: CollectorRegistry, sessions: async_sessionmaker[AsyncSession]) -> None:
        self._sessions = sessions
        self._counts: dict[str, dict[DeliveryStatus, int]] = {}
        registry.register(self)

    async def refresh(self) -> None:
        # A probe of the (procedure_id, status) index per known procedure, not a list of every unsettled row.
        unsettled = exists().where(DeliveryRow.procedure_id == KnownProcedureRow.procedure_id,
                                   DeliveryRow.status.in_(_UNSETTLED))
        active = select(KnownProcedureRow.procedure_id).where(or_(KnownProcedureRow.state.in_(_ACTIVE), unsettled))
        async with self._sessions() as session:
            counted = (await session.execute(
                select(DeliveryRow.procedure_id, DeliveryRow.status, func.count())
                .where(DeliveryRow.procedure_id.in_(active))
                .group_by(DeliveryRow.procedure_id, DeliveryRow.status)
            )).all()
        counts: dict[str, dict[DeliveryStatus, int]] = {}
        for procedure_id, status, n in counted:
            counts.setdefault(procedure_id, {})[status] = n
        self._counts = counts

    def collect(self) -> Iterator[Metric]:
        family = GaugeMetricFamily(
            "luccs_fanout_deliveries",
            "Deliveries of each active fan-out (procedure open or proposed, or deliveries unsettled), by status.",
            labels=["procedure_id", "status"],
        )
        for procedure_id, by_status in sorted(self._counts.items()):
            for status in DeliveryStatus:
                family.add_metric([procedure_id, status.value], by_status.get(status, 0))
        yield family
