"""Fixtures for the real servers the integration and end-to-end tests need.

The test command (``make test``) starts a Kafka broker and a PostgreSQL server and exports where they
are. These fixtures fail, rather than skip, when a server is missing: a skipped integration test would
hide exactly what the suite is for.
"""

from __future__ import annotations

import json
import os
import socket
import uuid
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import pytest

from tests.support import ChaosRecord, ChaosReport

KAFKA_ENV = "LUCCS_TEST_KAFKA"
VAR_DIR_ENV = "LUCCS_VAR_DIR"
POSTGRES_ENV = "LUCCS_TEST_POSTGRES_URL"
CLUSTER_ENV = "LUCCS_TEST_KAFKA_CLUSTER"
CLUSTER_DIR_ENV = "LUCCS_TEST_KAFKA_CLUSTER_DIR"


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


@dataclass(frozen=True)
class KafkaCluster:
    """A local 3-node KRaft cluster (``KAFKA_NODES=3 deploy/kafka/kafka.sh start``): node ``i``'s pid file is
    ``<directory>/node-<i>/kafka.pid``."""

    bootstrap_servers: str
    directory: Path


@pytest.fixture(scope="session")
def kafka_cluster() -> KafkaCluster:
    address = os.environ.get(CLUSTER_ENV)
    directory = os.environ.get(CLUSTER_DIR_ENV)
    if not address or not directory:
        pytest.fail(f"{CLUSTER_ENV} and {CLUSTER_DIR_ENV} are not set: run the suite with `make test`, which "
                    "starts the 3-broker cluster")
    if not any(_reachable(node) for node in address.split(",")):
        pytest.fail(f"no Kafka broker answers at {address} ({CLUSTER_ENV})")
    return KafkaCluster(bootstrap_servers=address, directory=Path(directory))


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


# --- the chaos and reliability report ---------------------------------------------------------------
# Every test that injects faults (SIGKILLs, a stopped broker, a cut database, poison messages, fuzzed
# requests) records what it injected and what it counted through the ``chaos`` fixture; the suite's
# output ends with one table of them, also written as JSON next to the test servers' data.


_CHAOS = pytest.StashKey[list[ChaosRecord]]()


@pytest.fixture
def chaos(request: pytest.FixtureRequest) -> Iterator[ChaosReport]:
    report = ChaosReport(request.node.nodeid)
    yield report
    request.config.stash.setdefault(_CHAOS, []).extend(report.records)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter, config: pytest.Config) -> None:
    records = config.stash.get(_CHAOS, [])
    if not records:
        return
    outcomes = {  # a failure or error in any phase outweighs the pass of the call
        report.nodeid: outcome
        for outcome in ("passed", "failed", "error")
        for report in terminalreporter.stats.get(outcome, [])
    }
    for record in records:
        record.outcome = outcomes.get(record.test, "?")
    terminalreporter.section("chaos and reliability report")
    header = f"{'faults':>7} {'messages':>9} {'losses':>7} {'duplicates':>11}  outcome  test: detail"
    terminalreporter.write_line(header)
    for r in records:
        name = r.test.split("::", 1)[-1]
        terminalreporter.write_line(
            f"{r.faults:>7} {r.messages:>9} {r.losses:>7} {r.duplicates:>11}  {r.outcome:<7}  {name}: {r.detail}"
        )
    totals = [sum(getattr(r, f) for r in records) for f in ("faults", "messages", "losses", "duplicates")]
    terminalreporter.write_line(
        f"{totals[0]:>7} {totals[1]:>9} {totals[2]:>7} {totals[3]:>11}  total over {len(records)} scenarios"
    )
    var_dir = os.environ.get(VAR_DIR_ENV)
    if var_dir:
        path = Path(var_dir) / "chaos-report.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps([asdict(r) for r in records], indent=2) + "\n", encoding="utf-8")
        terminalreporter.write_line(f"written to {path}")
