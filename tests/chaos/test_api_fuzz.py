"""Every service's HTTP API fuzzed from its own OpenAPI document with schemathesis: no 5xx, and every
answer conforms to the document (status code documented, content type, body schema).

Each app runs with its lifespan over the real broker and SQLite in a temporary directory, served by
uvicorn in a thread of its own; requests carry an operator token, so the protected routes are exercised
past the guard (the 401/403 answers are checked by tests/integration/test_roles.py). Schemathesis
generates valid and invalid path and query parameters and bodies per operation. Deterministic
(``derandomize``) and bounded (``MAX_EXAMPLES`` per operation).
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from fastapi import FastAPI
from hypothesis import HealthCheck, Phase, given, settings
from pydantic import SecretStr
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.core.result import Err, Ok
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from shared.config import ApiSettings, DetectorSettings, KafkaSettings, ProcedureSettings, Settings, TargetSettings
from shared.events import Component
from tests.support import ChaosReport, free_port, served_in_thread

pytestmark = pytest.mark.integration

OPERATOR = "operator-token-for-fuzzing"
AUTH = {"Authorization": f"Bearer {OPERATOR}"}
MAX_EXAMPLES = int(os.environ.get("LUCCS_FUZZ_EXAMPLES", "25"))  # per operation; raise it to hunt longer
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]


def _settings(tmp_path: Path, kafka_bootstrap: str, topic_prefix: str, **sections: Any) -> Settings:
    return Settings(
        data_dir=tmp_path,
        kafka=KafkaSettings(bootstrap_servers=kafka_bootstrap, topic_prefix=topic_prefix),
        api=ApiSettings(operator_tokens=[SecretStr(OPERATOR)]),
        **sections,
    )


def _app(name: str, tmp_path: Path, kafka_bootstrap: str, topic_prefix: str) -> FastAPI:
    if name == "procedure":
        from services.procedure.app import create_app as procedure_app

        return procedure_app(
            _settings(tmp_path, kafka_bootstrap, topic_prefix, procedure=ProcedureSettings(notifier_url=None))
        )
    if name == "notifier":
        from services.notifier.app import create_app as notifier_app

        return notifier_app(_settings(tmp_path, kafka_bootstrap, topic_prefix))
    from services.detector.app import create_app as detector_app

    target = TargetSettings(id="ada-as4", component=Component.ADA_B2G, url=f"http://127.0.0.1:{free_port()}/")
    detector = DetectorSettings(instance_id="fuzz", interval_s=0.5, timeout_s=0.3, targets=[target])
    return detector_app(_settings(tmp_path, kafka_bootstrap, topic_prefix, detector=detector))


@pytest.fixture(params=["procedure", "notifier", "detector"])
def service_url(
    request: pytest.FixtureRequest, tmp_path: Path, kafka_bootstrap: str, topic_prefix: str
) -> Iterator[str]:
    with served_in_thread(lambda: _app(request.param, tmp_path, kafka_bootstrap, topic_prefix)) as base_url:
        yield base_url


@pytest.fixture
def statuses(request: pytest.FixtureRequest, chaos: ChaosReport) -> Iterator[Counter[str]]:
    seen: Counter[str] = Counter()
    yield seen
    sent = sum(seen.values())
    chaos.add(faults=sent, messages=sent, losses=0, duplicates=0,
              detail=f"API fuzzed by schemathesis; responses {dict(sorted(seen.items()))}")


SKIPPED = {("GET", "/api/v1/stream")}  # a server-sent-event stream never ends: not a request/response to fuzz


def _fuzz(operation: Any, statuses: Counter[str]) -> None:
    """Valid and invalid requests of one operation (deterministic, ``MAX_EXAMPLES`` of them), each answer checked."""
    cases = operation.as_strategy(GenerationMode.POSITIVE) | operation.as_strategy(GenerationMode.NEGATIVE)

    @given(case=cases)
    @settings(max_examples=MAX_EXAMPLES, derandomize=True, deadline=None, database=None,
              suppress_health_check=list(HealthCheck), phases=[Phase.explicit, Phase.generate])
    def answers_as_documented(case: Any) -> None:
        response = case.call_and_validate(headers=AUTH, checks=CHECKS, timeout=15)
        statuses[f"{response.status_code // 100}xx"] += 1

    answers_as_documented()


def _leaves(exc: BaseException) -> list[str]:
    """What went wrong, without the exception groups around it (Hypothesis and schemathesis nest them)."""
    if isinstance(exc, BaseExceptionGroup):
        return [line for inner in exc.exceptions for line in _leaves(inner)]
    return [f"{type(exc).__name__}: {exc}"]


# The served app's thread (the broker client's jitter, ids) uses the global `random` while Hypothesis draws in
# this one, which Hypothesis cannot tell from a strategy using it; its own draws are derandomized all the same.
@pytest.mark.filterwarnings("ignore:Do not use the `random` module inside strategies")
def test_every_answer_is_documented_and_never_5xx(service_url: str, statuses: Counter[str]) -> None:
    schema = schemathesis.openapi.from_url(f"{service_url}/openapi.json")
    results = list(schema.get_all_operations())
    assert not [r.err() for r in results if isinstance(r, Err)], "the OpenAPI document is not valid"
    operations = [r.ok() for r in results if isinstance(r, Ok)]
    assert len(operations) >= 4, [o.label for o in operations]
    failed: dict[str, str] = {}
    for operation in operations:
        if (operation.method.upper(), operation.path) in SKIPPED:
            continue
        try:
            _fuzz(operation, statuses)
        except (Exception, BaseExceptionGroup) as exc:  # every operation is fuzzed; all failures reported together
            failed[operation.label] = "\n".join(_leaves(exc))[:4000]
    assert not failed, "\n\n".join(f"{label}:\n{why}" for label, why in failed.items())
