"""Bulk registry: POST /api/v1/eos:import and GET /api/v1/eos:export, served by uvicorn on loopback over the
real broker and SQLite (the registry topic is read back from the broker)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from cryptography.fernet import Fernet
from pydantic import SecretStr

from services.eo_cli import ImportAnswer, read_import_answer
from services.eo_cli import main as eos_cli
from services.procedure.app import create_app
from services.procedure.bulk import MAX_LINE_BYTES
from shared.config import ApiSettings, KafkaSettings, ProcedureSettings, Settings
from shared.events import EoData, parse_event
from tests.integration.test_procedure_api import _read_topic
from tests.support import pg_database, serving

pytestmark = pytest.mark.integration

OPERATOR, BUREAU, VIEWER = "operator-token-for-tests", "bureau-token-for-tests", "viewer-token-for-tests"
AUTH = {"Authorization": f"Bearer {OPERATOR}"}
NDJSON = {"Content-Type": "application/x-ndjson"} | AUTH
CSV = {"Content-Type": "text/csv"} | AUTH
SECRET = "a-secret-of-enough-length"


@dataclass
class Api:
    client: httpx.AsyncClient
    settings: Settings

    async def import_(self, body: bytes, headers: dict[str, str], keys: str = "file") -> ImportAnswer:
        response = await self.client.post("/api/v1/eos:import", content=body, headers=headers, params={"keys": keys})
        assert response.status_code == 200, response.text
        return read_import_answer(response.headers["content-type"], response.content)


@pytest.fixture
async def api(request: pytest.FixtureRequest, tmp_path: Path, kafka_bootstrap: str,
              topic_prefix: str) -> AsyncIterator[Api]:
    """The procedure service on SQLite, or (``indirect`` param ``"postgresql"``) on a PostgreSQL database of its
    own, where every chunk goes through the leadership lease like any registry write."""
    async with contextlib.AsyncExitStack() as stack:
        database_url = None
        if getattr(request, "param", "sqlite") == "postgresql":
            database_url = await stack.enter_async_context(pg_database(request.getfixturevalue("postgres_url")))
        async for served in _serve(tmp_path, kafka_bootstrap, topic_prefix, database_url):
            yield served


async def _serve(tmp_path: Path, kafka_bootstrap: str, topic_prefix: str,
                 database_url: str | None) -> AsyncIterator[Api]:
    settings = Settings(
        data_dir=tmp_path,
        kafka=KafkaSettings(bootstrap_servers=kafka_bootstrap, topic_prefix=topic_prefix),
        api=ApiSettings(operator_tokens=[SecretStr(OPERATOR)], bureau_tokens=[SecretStr(BUREAU)],
                        viewer_tokens=[SecretStr(VIEWER)], max_body_bytes=2048),
        procedure=ProcedureSettings(import_chunk_lines=3, import_max_bytes=200_000, database_url=database_url,
                                    sealing_key=SecretStr(Fernet.generate_key().decode())),
    )
    async with serving(create_app(settings), client_timeout_s=20) as client:
        yield Api(client, settings)


def _ndjson(*lines: object) -> bytes:
    return b"".join((line if isinstance(line, str) else json.dumps(line)).encode() + b"\n" for line in lines)


def _eo(eori: str, **fields: object) -> dict[str, object]:
    return {"eori": eori, "name": f"EO {eori}", "language": "en"} | fields


@pytest.mark.parametrize("api", ["sqlite", "postgresql"], indirect=True)
async def test_ndjson_import_upserts_by_eori_and_reports_each_rejected_line(api: Api) -> None:
    first = await api.import_(_ndjson(
        _eo("LU0001", webhook_url="https://eo.example/1", webhook_secret=SECRET),
        _eo("LU0002", email="ops@eo2.example"),
        _eo("LU0003"),
    ), NDJSON)
    assert (first.counts["created"], first.counts["updated"], first.counts["unchanged"]) == (3, 0, 0)
    assert [k["eori"] for k in first.keys] == ["LU0001", "LU0002", "LU0003"]
    key = first.keys[1]["api_key"]
    assert (await api.client.get("/api/v1/eos/LU0002", headers={"Authorization": f"Bearer {key}"})).status_code == 200

    # A mixed file, over several chunks (3 lines each): new, changed, unchanged, malformed, duplicate.
    mixed = _ndjson(
        _eo("LU0001", webhook_url="https://eo.example/1"),   # 1 unchanged: the stored secret stays
        _eo("LU0002", email="new@eo2.example"),              # 2 changed
        "",                                                  # 3 blank: skipped
        "{not json",                                         # 4
        _eo("LU0004", language="it"),                        # 5 no such language
        _eo("LU0005"),                                       # 6 new
        _eo("lu0005", name="again"),                         # 7 the same EORI as line 6
        ["LU0006"],                                          # 8 not an object
        _eo("LU0007", webhook_url="https://eo.example/7"),   # 9 a webhook without a secret to sign with
        _eo("LU0008", colour="blue"),                        # 10 unknown field
        _eo("LU0003"),                                       # 11 unchanged
        "x" * (MAX_LINE_BYTES + 10),                         # 12 too long
        _eo("LU0009", webhook_url="https://eo.example/9", webhook_secret=SECRET),  # 13 new
    )
    answer = await api.import_(mixed, NDJSON)
    assert (answer.counts["created"], answer.counts["updated"], answer.counts["unchanged"]) == (2, 1, 2)
    reasons = {r["line"]: r["reason"] for r in answer.counts["rejected"]}
    assert sorted(reasons) == [4, 5, 7, 8, 9, 10, 12], reasons
    assert reasons[4].startswith("not JSON")
    assert "language" in reasons[5]
    assert reasons[7] == "EORI LU0005 is already on line 6"
    assert "not a JSON object" in reasons[8]
    assert "webhook_secret is required" in reasons[9]
    assert "colour" in reasons[10]
    assert "longer than" in reasons[12]
    assert [k["eori"] for k in answer.keys] == ["LU0005", "LU0009"]
    assert (await api.client.get("/api/v1/eos/LU0002", headers=AUTH)).json()["email"] == "new@eo2.example"
    assert (await api.client.get("/api/v1/eos/LU0001", headers=AUTH)).json()["has_webhook_secret"] is True

    # The registry topic gets every upsert (3 created, then 2 created and 1 changed), unchanged ones not.
    messages = await _read_topic(api.settings, api.settings.kafka.eos_topic, count=6)
    upserts = [(key, parse_event(value, EoData).data) for key, value in messages if value is not None]
    assert sorted(key for key, _ in upserts) == ["LU0001", "LU0002", "LU0002", "LU0003", "LU0005", "LU0009"]
    assert [d.email for k, d in upserts if k == "LU0002"] == ["ops@eo2.example", "new@eo2.example"]
    secret = next(d.webhook_secret for k, d in upserts if k == "LU0009")
    assert secret is not None
    assert secret.get_secret_value() == SECRET

    # Changes of the secret or beside it: the event carries the secret in force (the new one, or the stored one
    # when the line leaves it out); the same secret again with nothing else changed is no change.
    again = await api.import_(_ndjson(
        _eo("LU0001", webhook_url="https://eo.example/1", webhook_secret="another-secret-of-length"),  # new secret
        _eo("LU0009", name="Nine renamed", webhook_url="https://eo.example/9"),                       # name only
        _eo("LU0005", webhook_url="https://eo.example/5", webhook_secret=SECRET),                     # secret given
        _eo("LU0003", webhook_secret=SECRET),                                                         # secret given
        _eo("LU0002", email="new@eo2.example"),                                                       # unchanged
    ), NDJSON)
    assert (again.counts["created"], again.counts["updated"], again.counts["unchanged"]) == (0, 4, 1)
    assert again.counts["rejected"] == [] and again.keys == []
    messages = await _read_topic(api.settings, api.settings.kafka.eos_topic, count=10)
    latest = {key: parse_event(value, EoData).data for key, value in messages if value is not None}
    secrets = {k: d.webhook_secret.get_secret_value() if d.webhook_secret else None for k, d in latest.items()}
    assert {k: secrets[k] for k in ("LU0001", "LU0009", "LU0005", "LU0003")} == {
        "LU0001": "another-secret-of-length", "LU0009": SECRET, "LU0005": SECRET, "LU0003": SECRET}
    assert latest["LU0009"].name == "Nine renamed"
    assert latest["LU0003"].api_key_hash == upserts[[k for k, _ in upserts].index("LU0003")][1].api_key_hash
    unchanged = await api.import_(_ndjson(_eo("LU0003", webhook_secret=SECRET)), NDJSON)
    assert unchanged.counts["unchanged"] == 1


async def test_csv_import_with_a_header_and_keys_none_then_export_round_trip(
    api: Api, monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr("services.procedure.api.bulk.EXPORT_PAGE", 2)  # 3 EOs: two pages, the last one short
    body = ("eori,name,language,email,webhook_url,webhook_secret\r\n"
            f"LU0001,Alpha,fr,a@alpha.example,https://alpha.example/h,{SECRET}\r\n"
            "LU0002,\"Beta, Gamma & Co\",de,,,\r\n"
            "LU0003,Gamma,en\r\n"                   # line 4: too few cells
            "LU0004,,en,,,\r\n"                     # line 5: no name
            "LU0002,Beta twice,de,,,\r\n").encode()  # line 6: duplicate
    answer = await api.import_(body, CSV, keys="none")
    assert answer.keys == []
    assert (answer.counts["created"], answer.counts["updated"], answer.counts["unchanged"]) == (2, 0, 0)
    assert [r["line"] for r in answer.counts["rejected"]] == [4, 5, 6]
    assert "3 cells" in answer.counts["rejected"][0]["reason"]

    # CSV keys file for a CSV import.
    created = await api.import_(b"eori,name\nLU0010,Ten\n", CSV)
    assert created.keys_file.startswith(b"eori,api_key\r\nLU0010,luccs_eo_")

    for accept, fmt in (("text/csv", CSV), ("application/x-ndjson", NDJSON)):
        export = await api.client.get("/api/v1/eos:export",
                                      headers={"Accept": accept, "Authorization": f"Bearer {BUREAU}"})
        assert export.status_code == 200
        assert SECRET not in export.text and "luccs_eo_" not in export.text and "api_key" not in export.text
        again = await api.import_(export.content, fmt)
        assert (again.counts["created"], again.counts["updated"], again.counts["unchanged"]) == (0, 0, 3), again
        assert again.counts["rejected"] == []
    lines = [json.loads(line) for line in export.text.splitlines()]
    assert [e["eori"] for e in lines] == ["LU0001", "LU0002", "LU0010"]
    assert lines[1]["name"] == "Beta, Gamma & Co"
    assert lines[0]["has_webhook_secret"] is True


async def test_bad_files_are_4xx_and_roles_are_enforced(api: Api) -> None:
    bad_header = await api.client.post("/api/v1/eos:import", content=b"eori,nom\nLU1,x\n", headers=CSV)
    assert bad_header.status_code == 400
    assert "nom" in bad_header.json()["detail"]
    assert (await api.client.post("/api/v1/eos:import", content=b"", headers=CSV)).status_code == 400
    assert (await api.client.post("/api/v1/eos:import", content=b"{}", headers=AUTH | {"Content-Type": "text/plain"})
            ).status_code == 415
    # Bigger than the edge's max_body_bytes (2 KiB here) is fine: the import has a limit of its own.
    many = _ndjson(*(_eo(f"LU{i:06d}") for i in range(40)))
    assert len(many) > 2048
    answer = await api.import_(many, NDJSON, keys="none")
    assert answer.counts["created"] == 40
    too_big = await api.client.post("/api/v1/eos:import", content=b"\n" * 200_001, headers=NDJSON)
    assert too_big.status_code == 413

    for token, may_import, may_export in ((BUREAU, False, True), (VIEWER, False, False)):
        who = {"Authorization": f"Bearer {token}"}
        imported = await api.client.post("/api/v1/eos:import", content=_ndjson(_eo("LU9")),
                                          headers=who | {"Content-Type": "application/x-ndjson"})
        assert imported.status_code == (200 if may_import else 403)
        exported = await api.client.get("/api/v1/eos:export", headers=who)
        assert exported.status_code == (200 if may_export else 403)
    assert (await api.client.get("/api/v1/eos:export")).status_code == 401
    key = (await api.import_(_ndjson(_eo("LU7")), NDJSON)).keys[0]["api_key"]
    assert (await api.client.get("/api/v1/eos:export", headers={"Authorization": f"Bearer {key}"})).status_code == 403
    spec = (await api.client.get("/openapi.json")).json()
    assert spec["paths"]["/api/v1/eos:import"]["post"]["responses"]["200"]["content"]["application/json"]["schema"]


async def test_cli_imports_a_file_with_progress_saves_the_keys_and_exports(
        api: Api, tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    source = tmp_path / "eos.csv"
    source.write_text("eori,name,language\nLU0001,Alpha,fr\nLU0002,Beta,de\nL,bad,fr\n", encoding="utf-8")
    keys = tmp_path / "keys.csv"
    url = str(api.client.base_url)
    code = await asyncio.to_thread(eos_cli, ["import", str(source), "--url", url, "--token", OPERATOR,
                                             "--keys-out", str(keys)])
    assert code == 3  # some lines rejected
    err = capfd.readouterr().err
    assert "100%" in err and "created 2, updated 0, unchanged 0, rejected 1" in err
    assert "line 4: eori:" in err
    assert "2 new API keys saved to" in err
    assert os.stat(keys).st_mode & 0o777 == 0o600
    assert [line.split(",")[0] for line in keys.read_text().splitlines()] == ["eori", "LU0001", "LU0002"]

    exported = tmp_path / "export.ndjson"
    code = await asyncio.to_thread(eos_cli, ["export", "--url", url, "--token", BUREAU, "-o", str(exported)])
    assert code == 0
    assert [json.loads(line)["eori"] for line in exported.read_text().splitlines()] == ["LU0001", "LU0002"]
    again = await asyncio.to_thread(eos_cli, ["import", str(source), "--url", url, "--token", OPERATOR,
                                              "--keys-out", str(tmp_path / "none.csv")])
    assert again == 3
    assert "unchanged 2" in (err := capfd.readouterr().err) and "API keys saved" not in err
    assert not (tmp_path / "none.csv").exists()
    refused = await asyncio.to_thread(eos_cli, ["import", str(source), "--url", url, "--token", BUREAU])
    assert refused == 1
    assert "403" in capfd.readouterr().err
