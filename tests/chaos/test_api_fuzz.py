"""Property-based fuzzing of every service's HTTP API from its own OpenAPI document: never a 5xx.

Each app is served by uvicorn on loopback (in a thread of its own, over the real broker and SQLite in a
temporary directory). Hypothesis generates, for every path and method of ``/openapi.json``, path
parameters, query parameters, headers (no, right, wrong or malformed credentials) and bodies (built from
the schema's fields with plausible and random values, arbitrary JSON, or bytes that are not JSON).
"""

from __future__ import annotations

import asyncio
import os
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest
import uvicorn
from fastapi import FastAPI
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import SecretStr

from shared.config import ApiSettings, DetectorSettings, KafkaSettings, ProcedureSettings, Settings, TargetSettings
from shared.events import Component
from tests.support import ChaosReport, free_port

pytestmark = pytest.mark.integration

OPERATOR = "operator-token-for-fuzzing"
MAX_EXAMPLES = int(os.environ.get("LUCCS_FUZZ_EXAMPLES", "150"))  # per service; raise it to hunt longer
SKIPPED = {("get", "/api/v1/stream")}  # a server-sent-event stream never ends: not a request/response

Schema = dict[str, Any]
Request = tuple[str, str, dict[str, Any], dict[str, str], dict[str, Any]]


def _settings(tmp_path: Path, kafka_bootstrap: str, topic_prefix: str, **sections: Any) -> Settings:
    return Settings(
        data_dir=tmp_path,
        kafka=KafkaSettings(bootstrap_servers=kafka_bootstrap, topic_prefix=topic_prefix),
        api=ApiSettings(operator_tokens=[SecretStr(OPERATOR)]),
        **sections,
    )


def _procedure_app(settings: Settings) -> FastAPI:
    from services.procedure.app import create_app

    return create_app(settings)


def _notifier_app(settings: Settings) -> FastAPI:
    from services.notifier.app import create_app

    return create_app(settings)


def _detector_app(settings: Settings) -> FastAPI:
    from services.detector.app import create_app

    return create_app(settings)


# ---- strategies -------------------------------------------------------------------------------------

JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=30),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4),
    max_leaves=12,
)
TEXT = st.text(max_size=60)
EORIS = st.from_regex(r"[A-Za-z]{2}[A-Z0-9]{1,16}", fullmatch=True) | st.sampled_from(["LU12345678", " lu1 ", "LU"])
URLS = st.sampled_from([
    "https://eo.example/hook", "http://127.0.0.1:1/hook", "http://[::1", "http://", "ftp://eo.example/",
    "https://eo.example:99999/", "//eo.example/x", "http://localhost/\x00",
]) | TEXT
EMAILS = st.sampled_from(["ops@eo.example", "a@b", "@", "x@y.z\n"]) | TEXT
DATES = st.datetimes().map(lambda d: d.isoformat()) | st.sampled_from(["2026-13-40", "now", "1970-01-01T00:00:00Z"])
HEADERS = st.sampled_from([
    {}, {"Authorization": f"Bearer {OPERATOR}"}, {"Authorization": "Bearer wrong-token"},
    {"Authorization": "Bearer luccs_eo_not-a-real-key"}, {"Authorization": "Basic Zm9vOmJhcg=="},
    {"Authorization": "Bearer"}, {"Authorization": ""},
])


def _resolve(schema: Schema, spec: Schema) -> Schema:
    while "$ref" in schema:
        name = schema["$ref"].rsplit("/", 1)[-1]
        schema = spec["components"]["schemas"][name]
    return schema


def _plausible(name: str) -> st.SearchStrategy[Any] | None:
    lowered = name.lower()
    if "eori" in lowered:
        return EORIS
    if "url" in lowered or "endpoint" in lowered:
        return URLS
    if "email" in lowered:
        return EMAILS
    if lowered in ("since", "until") or lowered.endswith("_at"):
        return DATES
    if "secret" in lowered:
        return st.text(min_size=10, max_size=40) | st.sampled_from(["a-secret-of-enough-length"])
    return None


def _from_schema(schema: Schema, spec: Schema, name: str = "", depth: int = 0) -> st.SearchStrategy[Any]:
    """Values that mostly fit ``schema``, and sometimes do not (random JSON, values near the bounds)."""
    schema = _resolve(schema, spec)
    if depth > 4:
        return JSON_VALUES
    plausible = _plausible(name)
    alternatives = [_of_type(schema, spec, name, depth)]
    if plausible is not None:
        alternatives.append(plausible)
    return st.one_of(*alternatives, JSON_VALUES) if depth else st.one_of(*alternatives)


def _of_type(schema: Schema, spec: Schema, name: str, depth: int) -> st.SearchStrategy[Any]:
    for key in ("anyOf", "oneOf", "allOf"):
        if key in schema:
            return st.one_of(*(_from_schema(s, spec, name, depth + 1) for s in schema[key]))
    if "enum" in schema:
        return st.sampled_from(schema["enum"]) | TEXT
    if "const" in schema:
        return st.just(schema["const"]) | TEXT
    kind = schema.get("type")
    if kind == "string":
        if schema.get("format") == "date-time":
            return DATES
        low, high = schema.get("minLength", 0), schema.get("maxLength", 60)
        return st.text(min_size=low, max_size=min(high, 60)) | st.text(min_size=min(high + 1, 2500),
                                                                       max_size=min(high + 5, 2500))
    if kind == "integer":
        low, high = schema.get("minimum"), schema.get("maximum")
        return st.integers(min_value=low, max_value=high) | st.integers() | st.sampled_from([-1, 0, 2**63, -(2**64)])
    if kind == "number":
        return st.floats(allow_nan=False, allow_infinity=False) | st.integers()
    if kind == "boolean":
        return st.booleans()
    if kind == "null":
        return st.none()
    if kind == "array":
        return st.lists(_from_schema(schema.get("items", {}), spec, name, depth + 1), max_size=3)
    if kind == "object" or "properties" in schema:
        properties: dict[str, Schema] = schema.get("properties", {})
        required = set(schema.get("required", []))
        return st.fixed_dictionaries(
            {key: _from_schema(value, spec, key, depth + 1) for key, value in properties.items() if key in required},
            optional={
                key: _from_schema(value, spec, key, depth + 1) for key, value in properties.items()
                if key not in required
            },
        )
    return JSON_VALUES


def _operation(path: str, method: str, operation: Schema, spec: Schema) -> st.SearchStrategy[Request]:
    path_params = {p["name"]: p for p in operation.get("parameters", []) if p["in"] == "path"}
    query_params = [p for p in operation.get("parameters", []) if p["in"] == "query"]

    path_value = (st.text(min_size=1, max_size=40) | EORIS | st.integers().map(str)
                  | st.sampled_from(["..", "%", "eo:LU1", "ada-as4"]))
    paths = st.fixed_dictionaries({name: path_value for name in path_params}).map(
        lambda values: path.format(**{k: quote(v, safe="") for k, v in values.items()})
    )
    queries = st.fixed_dictionaries(
        {},
        optional={
            p["name"]: _from_schema(p.get("schema", {}), spec, p["name"]).map(_query_value) for p in query_params
        },
    )
    extra = st.dictionaries(st.sampled_from(["x", "limit", "cursor", "state"]), TEXT, max_size=2)
    body: st.SearchStrategy[dict[str, Any]] = st.just({})
    content = operation.get("requestBody", {}).get("content", {})
    if "application/json" in content:
        schema = content["application/json"]["schema"]
        body = (
            _from_schema(schema, spec).map(lambda value: {"json": value})
            | JSON_VALUES.map(lambda value: {"json": value})
            | st.binary(max_size=200).map(lambda raw: {"content": raw, "headers": {"Content-Type": "application/json"}})
            | st.just({})
        )
    elif content or "requestBody" in operation:
        # A file upload (e.g. the bulk registry import): its declared types, and others, with any bytes.
        types = [*sorted(content), "application/json", "text/plain", "application/octet-stream"]
        body = st.builds(
            lambda raw, kind: {"content": raw, "headers": {"Content-Type": kind}},
            st.binary(max_size=300) | TEXT.map(str.encode), st.sampled_from(types),
        ) | st.just({})
    return st.tuples(
        st.just(method.upper()), paths, st.builds(lambda q, e: e | q, queries, extra), HEADERS, body
    )


def _query_value(value: Any) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, list | dict):
        return str(value)
    return "" if value is None else str(value)


def _operations(spec: Schema) -> st.SearchStrategy[tuple[Request, ...]]:
    """One generated request for every operation of the OpenAPI document (and the pages outside it)."""
    operations = [
        _operation(path, method, operation, spec)
        for path, methods in spec["paths"].items()
        for method, operation in methods.items()
        if (method, path) not in SKIPPED
    ]
    # Outside the document: the live status page (procedure service) or a 404, and the docs.
    operations.append(st.tuples(st.just("GET"), st.sampled_from(["/", "/docs", "/nowhere"]),
                                st.dictionaries(TEXT, TEXT, max_size=2), HEADERS, st.just({})))
    return st.tuples(*operations)


@dataclass
class Api:
    name: str
    client: httpx.AsyncClient
    requests: st.SearchStrategy[tuple[Request, ...]]
    operations: int
    statuses: Counter[str] = field(default_factory=Counter)


def _app(name: str, tmp_path: Path, kafka_bootstrap: str, topic_prefix: str) -> FastAPI:
    if name == "procedure":
        return _procedure_app(
            _settings(tmp_path, kafka_bootstrap, topic_prefix, procedure=ProcedureSettings(notifier_url=None))
        )
    if name == "notifier":
        return _notifier_app(_settings(tmp_path, kafka_bootstrap, topic_prefix))
    target = TargetSettings(id="ada-as4", component=Component.ADA_B2G, url=f"http://127.0.0.1:{free_port()}/")
    detector = DetectorSettings(instance_id="fuzz", interval_s=0.5, timeout_s=0.3, targets=[target])
    return _detector_app(_settings(tmp_path, kafka_bootstrap, topic_prefix, detector=detector))


@pytest.fixture(params=["procedure", "notifier", "detector"])
async def api(
    request: pytest.FixtureRequest, tmp_path: Path, kafka_bootstrap: str, topic_prefix: str, chaos: ChaosReport
) -> AsyncIterator[Api]:
    # Served in the test's own event loop: Hypothesis draws while the server's tasks are paused, so
    # nothing else touches the global random state during a draw.
    name: str = request.param
    port = free_port()
    config = uvicorn.Config(_app(name, tmp_path, kafka_bootstrap, topic_prefix), host="127.0.0.1", port=port,
                            log_config=None, access_log=False)
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    try:
        async with asyncio.timeout(60):
            while not server.started:
                assert not task.done(), f"the {name} app did not start"
                await asyncio.sleep(0.05)
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=10) as client:
            async with asyncio.timeout(60):
                while (await client.get("/readyz")).status_code != 200:
                    await asyncio.sleep(0.2)
            spec: Schema = (await client.get("/openapi.json")).raise_for_status().json()
            operations = sum(
                1 for path, methods in spec["paths"].items() for method in methods if (method, path) not in SKIPPED
            )
            assert operations >= 4, spec["paths"]
            fuzzed = Api(name, client, _operations(spec), operations)
            yield fuzzed
            sent = sum(fuzzed.statuses.values())
            chaos.add(faults=sent, messages=sent, losses=0, duplicates=0,
                      detail=f"{name} API fuzzed over {operations} operations; "
                             f"responses {dict(sorted(fuzzed.statuses.items()))}")
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, timeout=30)


@settings(
    max_examples=MAX_EXAMPLES, deadline=None, database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(data=st.data())
async def test_api_never_answers_5xx(api: Api, data: st.DataObject) -> None:
    for method, url, params, headers, body in data.draw(api.requests, label="requests"):
        all_headers = headers | body.get("headers", {})
        if "json" in body:
            response = await api.client.request(method, url, params=params, headers=all_headers, json=body["json"])
        else:
            response = await api.client.request(method, url, params=params, headers=all_headers,
                                                content=body.get("content"))
        api.statuses[f"{response.status_code // 100}xx"] += 1
        if url == "/readyz" and response.status_code == 503 and response.json().get("status") == "not ready":
            # Its contract: 503 while a dependency is not ready (the server's loop pauses between examples).
            continue
        assert response.status_code < 500, (
            f"{api.name}: {method} {url} params={params!r} headers={headers!r} body={body!r} -> "
            f"{response.status_code} {response.text[:500]}"
        )
