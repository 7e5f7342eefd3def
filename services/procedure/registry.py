"""The EO registry: who the economic operators are and how to reach them.

Every change is published to the compacted EO topic (key = EORI; deletion = tombstone) through the
outbox, so the detector and the notifier follow it without sharing this database. The webhook secret is
sealed at rest; the API key is returned once at creation and only its hash is kept.
"""

from __future__ import annotations

import asyncio
import hmac
import uuid
from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime
from typing import Any, cast

from pydantic import SecretStr
from pydantic_core import to_json
from sqlalchemy import Table, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from services.procedure.bulk import ChunkOutcome, ImportLine, Rejected
from services.procedure.leadership import Leadership
from services.procedure.models import EoRow, OutboxRow
from services.procedure.schemas import EoCreate, EoPatch
from services.procedure.sealing import Sealer, hash_api_key, new_api_key
from shared.config import KafkaSettings
from shared.db import insert_plain, update_plain
from shared.events import EventType, Language

SOURCE = "/luccs-fallback/procedure/eos"
_STORED = ("eori", "name", "language", "email", "webhook_url", "as4_endpoint", "webhook_secret_sealed", "api_key_hash")
_SEALED, _KEY_HASH = _STORED.index("webhook_secret_sealed"), _STORED.index("api_key_hash")
_INSERTED = ("eori", "name", "language", "email", "webhook_url", "as4_endpoint", "webhook_secret_sealed",
             "api_key_hash", "created_at", "updated_at")
_UPDATED = ("name", "language", "email", "webhook_url", "as4_endpoint", "webhook_secret_sealed", "updated_at")
_OUTBOX = ("topic", "key", "created_at", "epoch", "payload")


class Conflict(Exception):
    """The EO already exists (HTTP 409)."""


class EoRegistry:
    def __init__(
        self,
        *,
        kafka: KafkaSettings,
        sessions: async_sessionmaker[AsyncSession],
        sealer: Sealer,
        outbox_ready: asyncio.Event,
        leadership: Leadership | None = None,
    ) -> None:
        self._leadership = leadership
        self._kafka = kafka
        self._sessions = sessions
        self._sealer = sealer
        self._outbox_ready = outbox_ready

    async def create(self, body: EoCreate) -> tuple[EoRow, str]:
        """Register an EO; return it with its API key (the only time the key is shown)."""
        if body.webhook_url and body.webhook_secret is None:
            raise ValueError("webhook_secret is required with a webhook_url: notices are signed with it")
        api_key = new_api_key()
        now = datetime.now(UTC)
        async with self._sessions.begin() as session:
            epoch = await self._count(session)
            if await session.get(EoRow, body.eori) is not None:
                raise Conflict(f"EO {body.eori} is already registered: PATCH it instead")
            row = EoRow(
                eori=body.eori, name=body.name, language=body.language, email=body.email,
                webhook_url=body.webhook_url, webhook_secret_sealed=self._seal(body.webhook_secret),
                as4_endpoint=body.as4_endpoint, api_key_hash=hash_api_key(api_key), created_at=now, updated_at=now,
            )
            session.add(row)
            self._publish(session, row, now, epoch)
        self._outbox_ready.set()
        return row, api_key

    async def update(self, eori: str, body: EoPatch) -> EoRow:
        now = datetime.now(UTC)
        async with self._sessions.begin() as session:
            epoch = await self._count(session)
            row = await session.get(EoRow, eori)
            if row is None:
                raise LookupError(eori)
            given = body.model_fields_set
            if "name" in given:
                if body.name is None:
                    raise ValueError("name cannot be cleared")
                row.name = body.name
            if "language" in given:
                if body.language is None:
                    raise ValueError("language cannot be cleared")
                row.language = body.language
            for column in ("email", "webhook_url", "as4_endpoint"):
                if column in given:
                    setattr(row, column, getattr(body, column))
            if "webhook_secret" in given:
                row.webhook_secret_sealed = self._seal(body.webhook_secret)
            if row.webhook_url and not row.webhook_secret_sealed:
                raise ValueError("webhook_secret is required with a webhook_url: notices are signed with it")
            row.updated_at = now
            self._publish(session, row, now, epoch)
        self._outbox_ready.set()
        return row

    async def delete(self, eori: str) -> None:
        async with self._sessions.begin() as session:
            epoch = await self._count(session)
            row = await session.get(EoRow, eori)
            if row is None:
                raise LookupError(eori)
            await session.delete(row)
            session.add(OutboxRow(topic=self._kafka.eos_topic, key=eori, payload=None, created_at=datetime.now(UTC),
                                  epoch=epoch))
        self._outbox_ready.set()

    async def rotate_key(self, eori: str) -> str:
        api_key = new_api_key()
        async with self._sessions.begin() as session:
            epoch = await self._count(session)
            row = await session.get(EoRow, eori)
            if row is None:
                raise LookupError(eori)
            now = datetime.now(UTC)
            row.api_key_hash = hash_api_key(api_key)
            row.updated_at = now
            self._publish(session, row, now, epoch)  # the notifier learns the new key's hash
        self._outbox_ready.set()
        return api_key

    async def upsert_chunk(self, lines: Sequence[ImportLine], *, issue_keys: bool) -> ChunkOutcome:
        """Create or update the EOs of one chunk of an import in one transaction (an EO equal to its line is
        left alone and not republished). ``issue_keys``: return each new EO's API key; otherwise the new EO
        gets a key nobody knows (issue one with ``POST /api/v1/eos/{eori}/api-key``).

        Written for 100,000-line files: the stored EOs are read and the rows written as plain tuples
        (:func:`shared.db.insert_plain`, :func:`shared.db.update_plain`), not through the ORM, and the
        registry events are serialised straight from their values (:func:`eo_event_bytes`)."""
        outcome = ChunkOutcome()
        now = datetime.now(UTC)
        created: list[tuple[Any, ...]] = []
        updated: list[tuple[Any, ...]] = []
        events: list[tuple[Any, ...]] = []
        topic = self._kafka.eos_topic
        async with self._sessions.begin() as session:
            epoch = await self._count(session)
            found = await session.execute(
                select(*(EoRow.__table__.c[c] for c in _STORED)).where(EoRow.eori.in_([ln.eo.eori for ln in lines])))
            existing = {row[0]: row for row in found}
            for line in lines:
                body = line.eo
                row = existing.get(body.eori)
                secret = body.webhook_secret.get_secret_value() if body.webhook_secret is not None else None
                if body.webhook_url and secret is None and (row is None or row[_SEALED] is None):
                    outcome.rejected.append(Rejected(line.line, "webhook_secret is required with a webhook_url: "
                                                                "notices are signed with it"))
                    continue
                wanted = (body.name, body.language, body.email, body.webhook_url, body.as4_endpoint)
                if row is None:
                    api_key = new_api_key()
                    key_hash = hash_api_key(api_key)
                    created.append((body.eori, *wanted, self._sealer.seal(secret) if secret is not None else None,
                                    key_hash, now, now))
                    outcome.created += 1
                    if issue_keys:
                        outcome.keys.append((body.eori, api_key))
                else:
                    sealed = row[_SEALED]
                    stored = self._sealer.unseal(sealed) if sealed is not None and secret is not None else None
                    if wanted == tuple(row[1:_SEALED]) and (secret is None or secret == stored):
                        outcome.unchanged += 1
                        continue
                    if secret is not None and secret != stored:
                        sealed = self._sealer.seal(secret)
                    key_hash = row[_KEY_HASH]
                    updated.append((*wanted, sealed, now, body.eori))
                    outcome.updated += 1
                    if secret is None and sealed is not None:
                        secret = self._sealer.unseal(sealed)
                events.append((topic, body.eori, now, epoch, eo_event_bytes(
                    eori=body.eori, name=body.name, language=body.language, email=body.email,
                    webhook_url=body.webhook_url, webhook_secret=secret, as4_endpoint=body.as4_endpoint,
                    api_key_hash=key_hash, time=now)))
            table = cast(Table, EoRow.__table__)
            await insert_plain(session, table, columns=_INSERTED, rows=created)
            await update_plain(session, table, set_columns=_UPDATED, keys=("eori",), rows=updated)
            await insert_plain(session, cast(Table, OutboxRow.__table__), columns=_OUTBOX, rows=events)
        self._outbox_ready.set()
        return outcome

    async def get(self, eori: str) -> EoRow | None:
        async with self._sessions() as session:
            return await session.get(EoRow, eori)

    async def page(self, *, after: str | None, limit: int) -> Sequence[EoRow]:
        query = select(EoRow).order_by(EoRow.eori).limit(limit)
        if after is not None:
            query = query.where(EoRow.eori > after)
        async with self._sessions() as session:
            return (await session.scalars(query)).all()

    async def each(self, *, batch: int = 1000) -> AsyncIterator[Sequence[EoRow]]:
        """Every EO by EORI, ``batch`` rows at a time, each batch read in its own short session (an export of
        100,000 EOs holds neither a transaction nor every row for its whole length)."""
        after: str | None = None
        while True:
            rows = await self.page(after=after, limit=batch)
            if rows:
                yield rows
            if len(rows) < batch:
                return
            after = rows[-1].eori

    async def authenticate(self, api_key: str) -> EoRow | None:
        """The EO this API key belongs to, if any."""
        digest = hash_api_key(api_key)
        async with self._sessions() as session:
            row = await session.scalar(select(EoRow).where(EoRow.api_key_hash == digest))
        # The lookup is by hash already; compare once more in constant time for good measure.
        return row if row is not None and hmac.compare_digest(row.api_key_hash, digest) else None

    def _seal(self, secret: SecretStr | None) -> str | None:
        return self._sealer.seal(secret.get_secret_value()) if secret is not None else None

    async def _count(self, session: AsyncSession) -> int | None:
        """On any instance: count the change on the lease row, which wakes the leader's outbox."""
        return await self._leadership.serialise_command(session) if self._leadership is not None else None

    def _publish(self, session: AsyncSession, row: EoRow, now: datetime, epoch: int | None) -> None:
        secret = self._sealer.unseal(row.webhook_secret_sealed) if row.webhook_secret_sealed else None
        payload = eo_event_bytes(eori=row.eori, name=row.name, language=row.language, email=row.email,
                                 webhook_url=row.webhook_url, webhook_secret=secret, as4_endpoint=row.as4_endpoint,
                                 api_key_hash=row.api_key_hash, time=now)
        session.add(OutboxRow(topic=self._kafka.eos_topic, key=row.eori, payload=payload, created_at=now, epoch=epoch))


def eo_event_bytes(
    *, eori: str, name: str, language: Language, email: str | None, webhook_url: str | None,
    webhook_secret: str | None, as4_endpoint: str | None, api_key_hash: str | None, time: datetime,
) -> bytes:
    """The registry topic's message for an EO (``webhook_secret`` unsealed): the JSON of
    ``CloudEvent[EoData](...).to_bytes()``, byte for byte (a unit test compares them), written by the same
    serialiser (pydantic-core) from the values without building and validating the two models, which an
    import of 100,000 EOs did once per EO. The values come validated (:class:`EoCreate`, the database)."""
    return to_json({
        "specversion": "1.0", "id": str(uuid.uuid4()), "source": SOURCE, "type": EventType.EO_UPSERTED,
        "time": time, "subject": eori, "datacontenttype": "application/json",
        "data": {"eori": eori, "name": name, "language": language, "email": email, "webhook_url": webhook_url,
                 "webhook_secret": webhook_secret or None, "as4_endpoint": as4_endpoint, "api_key_hash": api_key_hash},
    })


def eo_view(row: EoRow) -> dict[str, object]:
    """An EO as the API shows it: never the secret, never the key."""
    return {
        "eori": row.eori,
        "name": row.name,
        "language": row.language,
        "email": row.email,
        "webhook_url": row.webhook_url,
        "has_webhook_secret": row.webhook_secret_sealed is not None,
        "as4_endpoint": row.as4_endpoint,
        "created_at": row.created_at,
        "updated_at": row.updated_at,
    }
