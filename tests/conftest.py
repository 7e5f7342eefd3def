"""Fixtures for the real servers the integration and end-to-end tests need.

The test command (``make test``) starts a Kafka broker and a PostgreSQL server and exports where they
are. These fixtures fail, rather than skip, when a server is missing: a skipped integration test would
hide exactly what the suite is for.
"""

from __future__ import annotations

import os
import socket
import uuid

import pytest

KAFKA_ENV = "LUCCS_TEST_KAFKA"
POSTGRES_ENV = "LUCCS_TEST_POSTGRES_URL"


def _reachable(address: str) -> bool:
    host, _, port = address.rpartition(":")
    try:
        with socket.create_connection((host, int(port)), timeout=2):
            return True
    except OSError:
        return False


@pytest.fixture(scope="session")
def kafka_bootstrap() -> str:
    address = os.environ.get(KAFKA_ENV)
    if not address:
        pytest.fail(f"{KAFKA_ENV} is not set: run the suite with `make test`, which starts the broker")
    if not _reachable(address):
        pytest.fail(f"no Kafka broker answers at {address} ({KAFKA_ENV})")
    return address


@pytest.fixture(scope="session")
def postgres_url() -> str:
    url = os.environ.get(POSTGRES_ENV)
    if not url:
        pytest.fail(f"{POSTGRES_ENV} is not set: run the suite with `make test`, which starts PostgreSQL")
    return url


@pytest.fixture
def topic_prefix() -> str:
    """A prefix of its own per test, so tests sharing one broker never see each other's messages."""
    return f"test-{uuid.uuid4().hex[:12]}"
