"""Token entries, secrets from files, the failed-authentication limit and the body size limit."""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from fastapi import Depends, FastAPI
from pydantic import SecretStr

from services.detector.api import router
from shared.auth import authorize, build_guard, install_guard
from shared.config import ApiSettings, ConfigError, load_settings
from shared.roles import Role, parse_token


def test_token_entries_have_one_reading() -> None:
    digest = hashlib.sha256(b"tok").hexdigest()
    assert parse_token("tok", Role.OPERATOR).name == f"operator:{digest[:8]}"
    assert parse_token("tok", Role.OPERATOR).digest == bytes.fromhex(digest)
    assert parse_token("alice:tok", Role.OPERATOR).name == "operator:alice"
    assert parse_token("alice:tok", Role.OPERATOR).digest == bytes.fromhex(digest)
    assert parse_token(f"sha256:{digest}", Role.BUREAU).digest == bytes.fromhex(digest)
    assert parse_token(f"bdr:sha256:{digest.upper()}", Role.BUREAU).name == "bureau:bdr"
    for bad in ("", "a:b:c", "has space", "na me:tok", "alice:", "sha256:abc"):
        with pytest.raises(ValueError, match="viewer token") as refused:
            parse_token(bad, Role.VIEWER)
        assert "tok" not in str(refused.value).replace("token", "")  # the value is never quoted


def test_read_tokens_are_viewer_tokens_and_a_token_has_one_role() -> None:
    api = ApiSettings(read_tokens=[SecretStr("old-read-token")], viewer_tokens=[SecretStr("new")])
    assert [t.get_secret_value() for t in api.token_entries()[Role.VIEWER]] == ["new", "old-read-token"]
    with pytest.raises(ValueError, match="both a viewer and a operator token"):
        ApiSettings(viewer_tokens=[SecretStr("same")], operator_tokens=[SecretStr("x:same")])


def test_every_secret_may_come_from_a_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "operators").write_text("# one entry a line\nalice:tok-a\n\nsha256:" + "0" * 64 + "\n")
    (tmp_path / "smtp").write_text("smtp-password\n")
    (tmp_path / "db").write_text("postgresql+asyncpg://luccs:pw@db/luccs\n")
    (tmp_path / "bureau").write_text("bdr:tok-b\n")
    config = tmp_path / "luccs.toml"
    config.write_text(
        f'[api]\noperator_tokens_file = "{tmp_path / "operators"}"\n'
        f'[smtp]\npassword_file = "{tmp_path / "smtp"}"\n'
        f'[procedure]\ndatabase_url_file = "{tmp_path / "db"}"\n'
    )
    monkeypatch.setenv("LUCCS_API__BUREAU_TOKENS_FILE", str(tmp_path / "bureau"))
    settings = load_settings(config)
    assert [t.get_secret_value() for t in settings.api.operator_tokens] == ["alice:tok-a", "sha256:" + "0" * 64]
    assert [t.get_secret_value() for t in settings.api.bureau_tokens] == ["bdr:tok-b"]
    assert settings.smtp.password is not None and settings.smtp.password.get_secret_value() == "smtp-password"
    assert settings.procedure.database_url == "postgresql+asyncpg://luccs:pw@db/luccs"

    config.write_text(f'[smtp]\npassword = "x"\npassword_file = "{tmp_path / "smtp"}"\n')
    with pytest.raises(ConfigError, match="give password or password_file, not both"):
        load_settings(config)
    config.write_text(f'[smtp]\npassword_file = "{tmp_path / "missing"}"\n')
    with pytest.raises(ConfigError, match="password_file: cannot read"):
        load_settings(config)
    config.write_text('[api]\nhost_file = "/etc/hostname"\n')  # not a secret: no _file form
    with pytest.raises(ConfigError, match="host_file"):
        load_settings(config)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _app(clock: Clock) -> FastAPI:
    app = FastAPI(dependencies=[Depends(authorize)])
    app.include_router(router)
    api = ApiSettings(viewer_tokens=[SecretStr("viewer-token")], auth_failure_limit=3, auth_failure_window_s=60,
                      max_body_bytes=2048)
    install_guard(app, build_guard(service="detector", api=api, clock=clock), max_body_bytes=api.max_body_bytes)
    return app


async def test_failed_authentications_are_limited_per_address() -> None:
    clock = Clock()
    app = _app(clock)
    wrong = {"Authorization": "Bearer wrong"}
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app, client=("192.0.2.1", 1)),
                                 base_url="http://d") as attacker, \
            httpx.AsyncClient(transport=httpx.ASGITransport(app=app, client=("192.0.2.2", 1)),
                              base_url="http://d") as neighbour:
        assert [(await attacker.get("/api/v1/targets", headers=wrong)).status_code for _ in range(3)] == [403] * 3
        blocked = await attacker.get("/api/v1/targets", headers=wrong)
        assert blocked.status_code == 429
        assert blocked.headers["Retry-After"] == "60"
        assert set(blocked.json()) == {"detail"}
        # Blocked even with the right token (a guess that succeeds must not be told apart) ...
        right = {"Authorization": "Bearer viewer-token"}
        assert (await attacker.get("/api/v1/targets", headers=right)).status_code == 429
        # ... but public routes answer, and another address is not affected.
        assert (await attacker.get("/healthz")).status_code != 429
        assert (await neighbour.get("/api/v1/targets", headers=right)).status_code == 503  # not started: no 4xx
        clock.now += 45
        assert (await attacker.get("/api/v1/targets", headers=wrong)).headers["Retry-After"] == "15"
        clock.now += 15
        assert (await attacker.get("/api/v1/targets", headers=right)).status_code == 503


async def test_request_bodies_are_size_limited() -> None:
    app = _app(Clock())
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://d") as client:
        big = await client.post("/api/v1/targets", content=b"x" * 4096, headers={"Content-Type": "application/json"})
        assert big.status_code == 413
        assert big.json() == {"detail": "request body larger than 2048 bytes"}

        async def chunks() -> AsyncIterator[bytes]:  # no Content-Length: counted as it arrives
            for _ in range(4):
                yield b"y" * 1024

        streamed = await client.post("/api/v1/targets", content=chunks())
        assert streamed.status_code == 413
        small = await client.post("/api/v1/targets", content=b"{}")
        assert small.status_code == 405  # within the limit: on to the routes
