"""A failed statement's error, as logged with its traceback, never carries the statement's values: EO e-mails
and webhook secrets (unsealed in the registry outbox's event bytes) must not reach a log (PRODUCT.md)."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.exc import IntegrityError

from shared.db import make_engine

SECRET = "TOPSECRET-webhook-secret-123"


async def test_a_failed_statement_does_not_show_its_values(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'db.sqlite'}")
    try:
        async with engine.begin() as connection:
            await connection.execute(text("CREATE TABLE outbox (id INTEGER PRIMARY KEY, body TEXT)"))
            await connection.execute(text("INSERT INTO outbox VALUES (1, 'x')"))
        with pytest.raises(IntegrityError) as failed:
            async with engine.begin() as connection:
                await connection.execute(text("INSERT INTO outbox VALUES (:id, :body)"), {"id": 1, "body": SECRET})
        assert "UNIQUE" in str(failed.value)
        assert SECRET not in str(failed.value)
    finally:
        await engine.dispose()
