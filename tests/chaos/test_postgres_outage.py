"""The procedure service losing its PostgreSQL database, and getting it back, without manual action.

The shared test server is never stopped: the service reaches its own database through a TCP proxy run by
the test, and the outage is the proxy closing (its listening socket and every open connection).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydantic import SecretStr
from sqlalchemy.engine import make_url

from services.procedure.app import create_app
from shared.config import ApiSettings, KafkaSettings, ProcedureSettings, Settings
from tests.support import ChaosReport, eventually, free_port, pg_admin, serving

pytestmark = [pytest.mark.integration, pytest.mark.postgres]

DATABASE = "luccs_chaos"
OPERATOR = "operator-token-for-chaos"
AUTH = {"Authorization": f"Bearer {OPERATOR}"}


class TcpProxy:
    """Forwards a loopback port to another; ``close`` refuses new connections and cuts the open ones."""

    def __init__(self, target_host: str, target_port: int) -> None:
        self.port = free_port()
        self._target = (target_host, target_port)
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._handlers: set[asyncio.Task[Any]] = set()

    @property
    def is_open(self) -> bool:
        return self._server is not None

    async def open(self) -> None:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", self.port, reuse_address=True)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        for writer in list(self._writers):
            writer.transport.abort()
        if self._handlers:
            await asyncio.wait(list(self._handlers), timeout=5)

    async def _handle(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        self._writers.add(client_writer)
        try:
            try:
                upstream_reader, upstream_writer = await asyncio.open_connection(*self._target)
            except OSError:
                client_writer.transport.abort()
                return
            self._writers.add(upstream_writer)
            await asyncio.gather(
                self._pipe(client_reader, upstream_writer), self._pipe(upstream_reader, client_writer)
            )
            self._writers.discard(upstream_writer)
        finally:
            self._writers.discard(client_writer)
            self._handlers.discard(task)

    @staticmethod
    async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except OSError:
            pass
        finally:
            writer.transport.abort()




@dataclass
class Service:
    client: httpx.AsyncClient
    proxy: TcpProxy


@pytest.fixture
async def service(tmp_path: Path, kafka_bootstrap: str, topic_prefix: str, postgres_url: str) -> AsyncIterator[Service]:
    drop = f'DROP DATABASE IF EXISTS "{DATABASE}" WITH (FORCE)'
    await pg_admin(postgres_url, drop, f'CREATE DATABASE "{DATABASE}"')
    server_url = make_url(postgres_url)
    assert server_url.host is not None and server_url.port is not None
    proxy = TcpProxy(server_url.host, server_url.port)
    await proxy.open()
    database_url = server_url.set(host="127.0.0.1", port=proxy.port, database=DATABASE)
    settings = Settings(
        data_dir=tmp_path,
        kafka=KafkaSettings(bootstrap_servers=kafka_bootstrap, topic_prefix=topic_prefix),
        api=ApiSettings(operator_tokens=[SecretStr(OPERATOR)]),
        procedure=ProcedureSettings(database_url=database_url.render_as_string(hide_password=False),
                                    notifier_url=None),
    )
    try:
        async with serving(create_app(settings)) as client:
            try:
                yield Service(client, proxy)
            finally:
                if not proxy.is_open:  # let the engine close its connections cleanly
                    await proxy.open()
    finally:
        await proxy.close()
        await pg_admin(postgres_url, drop)




async def test_readyz_names_the_lost_database_and_everything_recovers_when_it_is_back(
    service: Service, chaos: ChaosReport
) -> None:
    client = service.client

    async def ready() -> bool:
        return (await client.get("/readyz")).status_code == 200

    await eventually(ready, timeout=60, what="/readyz 200 at start")
    first = await client.post("/api/v1/eos", json={"eori": "LU0000001", "name": "Before"}, headers=AUTH)
    assert first.status_code == 201, first.text

    await service.proxy.close()

    async def database_problem() -> dict[str, Any] | None:
        response = await client.get("/readyz")
        body: dict[str, Any] = response.json()
        return body if response.status_code == 503 and "database" in body.get("problems", {}) else None

    problem = await eventually(database_problem, timeout=20, what="/readyz 503 naming the database")
    during = await client.post("/api/v1/eos", json={"eori": "LU0000002", "name": "During"}, headers=AUTH)
    assert during.status_code == 503, during.text  # a clear "try again", never a 500

    await service.proxy.open()
    await eventually(ready, timeout=30, what="/readyz 200 once the database is back")
    assert (await client.get("/healthz")).status_code == 200
    after = await client.post("/api/v1/eos", json={"eori": "LU0000003", "name": "After"}, headers=AUTH)
    assert after.status_code == 201, after.text
    listed = [eo["eori"] for eo in (await client.get("/api/v1/eos", headers=AUTH)).json()["items"]]
    chaos.add(faults=1, messages=3, losses=len({"LU0000001", "LU0000003"} - set(listed)),
              duplicates=len(listed) - len(set(listed)),
              detail=f"the database connection cut; /readyz 503 ({', '.join(problem['problems'])}), a write during "
                     f"the cut -> {during.status_code}, writes before and after kept")
    assert {"LU0000001", "LU0000003"} <= set(listed)
