"""Real loopback servers for tests (a target that can be switched off, a webhook receiver) and test helpers."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import json
import socket
import subprocess
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import uvicorn


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def wait_for(predicate: Callable[[], Any], *, timeout: float, interval: float = 0.1, what: str = "condition") -> Any:
    """Poll ``predicate`` until it returns something truthy; fail with ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


async def eventually(
    check: Callable[[], Any], *, timeout: float = 30, interval: float = 0.05, what: str = "condition"
) -> Any:
    """Poll ``check`` (sync, or returning an awaitable) until it gives something truthy, and return it; fail
    with ``what`` after ``timeout`` seconds. The asyncio twin of :func:`wait_for`."""
    try:
        async with asyncio.timeout(timeout):
            while True:
                value = check()
                if inspect.isawaitable(value):
                    value = await value
                if value:
                    return value
                await asyncio.sleep(interval)
    except TimeoutError:
        raise AssertionError(f"timed out after {timeout}s waiting for {what}") from None


def stop_processes(processes: dict[str, subprocess.Popen[bytes]], logs: dict[str, Path]) -> None:
    """SIGTERM every service process, SIGKILL the ones that linger, and print the log of any that failed."""
    for process in processes.values():
        process.terminate()
    for name, process in processes.items():
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=5)
        if process.returncode not in (0, -15):
            print(f"--- {name} exited {process.returncode}; log:\n{logs[name].read_text()[-4000:]}")


class _Quiet(BaseHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


class ToggleServer:
    """An HTTP server on a fixed loopback port that answers 200, and can be really switched off (refused)."""

    def __init__(self, port: int | None = None, body: bytes = b"ok") -> None:
        self.port = port or free_port()
        self.body = body
        self._server: ThreadingHTTPServer | None = None
        self._failures = 0
        self._lock = threading.Lock()

    def fail_next(self, count: int) -> None:
        """Answer the next ``count`` requests with 503 (a blip shorter than a failure streak), then 200 again."""
        with self._lock:
            self._failures = count

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/health"

    def up(self) -> None:
        if self._server is not None:
            return
        body = self.body
        toggle = self

        class Handler(_Quiet):
            def do_GET(self) -> None:
                with toggle._lock:
                    failing = toggle._failures > 0
                    toggle._failures -= failing
                self.send_response(503 if failing else 200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        ThreadingHTTPServer.allow_reuse_address = True
        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def down(self) -> None:
        if self._server is None:
            return
        self._server.shutdown()
        self._server.server_close()
        self._server = None


@dataclass
class ReceivedWebhook:
    path: str
    headers: dict[str, str]
    body: bytes

    @property
    def event(self) -> dict[str, Any]:
        parsed: dict[str, Any] = json.loads(self.body)
        return parsed


@dataclass
class WebhookReceiver:
    """Records every POST; answers with the next status of ``statuses`` (then 200), after ``delay_s``."""

    statuses: list[int] = field(default_factory=list)
    delay_s: float = 0.0
    received: list[ReceivedWebhook] = field(default_factory=list)
    port: int = field(default_factory=free_port)
    _server: ThreadingHTTPServer | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def url(self, path: str = "/hook") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def start(self) -> WebhookReceiver:
        receiver = self

        class Handler(_Quiet):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", "0"))
                body = self.rfile.read(length)
                with receiver._lock:
                    receiver.received.append(ReceivedWebhook(self.path, dict(self.headers.items()), body))
                    status = receiver.statuses.pop(0) if receiver.statuses else 200
                if receiver.delay_s:
                    time.sleep(receiver.delay_s)
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

        ThreadingHTTPServer.allow_reuse_address = True
        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def of_type(self, event_type: str, path: str | None = None) -> list[ReceivedWebhook]:
        with self._lock:
            return [
                w for w in self.received
                if w.event.get("type") == event_type and (path is None or w.path == path)
            ]


@dataclass
class ChaosRecord:
    test: str
    faults: int
    messages: int
    losses: int
    duplicates: int
    detail: str = ""
    outcome: str = "?"


@dataclass
class ChaosReport:
    test: str
    records: list[ChaosRecord] = field(default_factory=list)

    def add(self, *, faults: int, messages: int, losses: int, duplicates: int, detail: str = "") -> None:
        """Record one scenario's counts; call it before the assertions, so a failed run still reports."""
        self.records.append(ChaosRecord(self.test, faults, messages, losses, duplicates, detail))

    def add_procedure_notices(self, *, faults: int, opened: int, closed: int, detail: str) -> None:
        """One procedure expected to open and close once: a missing notice is a loss, an extra one a duplicate."""
        self.add(faults=faults, messages=opened + closed, losses=int(opened == 0) + int(closed == 0),
                 duplicates=max(0, opened - 1) + max(0, closed - 1),
                 detail=f"{detail}; {opened} opened + {closed} closed notices")


async def pg_admin(server_url: str, *statements: str) -> None:
    """Run ``statements`` on the PostgreSQL server of ``server_url``, connected to its ``postgres`` database."""
    import asyncpg  # type: ignore[import-untyped]
    from sqlalchemy.engine import make_url

    base = make_url(server_url)
    connection = await asyncpg.connect(
        host=base.host, port=base.port, user=base.username, password=base.password, database="postgres"
    )
    try:
        for statement in statements:
            await connection.execute(statement)
    finally:
        await connection.close()


@contextlib.asynccontextmanager
async def pg_database(server_url: str, prefix: str = "luccs_test") -> AsyncIterator[str]:
    """An empty PostgreSQL database of its own on the test server (its URL), dropped afterwards."""
    from sqlalchemy.engine import make_url

    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    await pg_admin(server_url, f'CREATE DATABASE "{name}"')
    try:
        yield make_url(server_url).set(database=name).render_as_string(hide_password=False)
    finally:
        await pg_admin(server_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@contextlib.asynccontextmanager
async def scratch_table(database_url: str, table: Any, rows: list[dict[str, Any]] | None = None) -> AsyncIterator[Any]:
    """``table`` (a SQLAlchemy ``Table`` of a name of its own) created in ``database_url`` with ``rows``, a session
    on that database (an ``AsyncSession``), and the table dropped afterwards."""
    from shared.db import make_engine, session_factory

    engine = make_engine(database_url)
    try:
        async with engine.begin() as connection:
            await connection.run_sync(table.metadata.create_all)
            if rows:
                await connection.execute(table.insert(), rows)
        async with session_factory(engine)() as session:
            yield session
    finally:
        async with engine.begin() as connection:
            await connection.run_sync(table.metadata.drop_all)
        await engine.dispose()


BUREAU_TOKEN = "bureau-token-for-tests"
"""A bureau token (reads everything, EO data included; writes nothing) for tests that read EO data."""
BUREAU = {"Authorization": f"Bearer {BUREAU_TOKEN}"}


@contextlib.asynccontextmanager
async def serving(app: Any, *, client_timeout_s: float = 10.0) -> AsyncIterator[httpx.AsyncClient]:
    """Serve ``app`` (an ASGI app: its lifespan runs) with uvicorn on a free loopback port; yield a client
    whose ``base_url`` is it, once the server has started (within 60 s); stop the server afterwards."""
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=free_port(), log_config=None))
    task = asyncio.create_task(server.serve())
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{server.config.port}",
                                     timeout=client_timeout_s) as client:
            async with asyncio.timeout(60):
                while not server.started:
                    if task.done():  # it failed to start: say why
                        await task
                        raise RuntimeError("the server stopped before it started")
                    await asyncio.sleep(0.05)
            yield client
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, timeout=30)


@contextlib.contextmanager
def served_in_thread(make_app: Callable[[], Any], *, ready_path: str = "/readyz",
                     timeout: float = 60.0) -> Iterator[str]:
    """Serve the app ``make_app`` builds with uvicorn on loopback, in a thread and event loop of its own (the
    app is built in that loop: its broker clients belong to it), lifespan included, until the block ends;
    yields its base URL once ``ready_path`` answers 200. For tests whose client is synchronous (schemathesis):
    a server in the test's own loop would never get to answer."""
    import httpx
    import uvicorn

    port = free_port()
    servers: list[uvicorn.Server] = []
    failures: list[BaseException] = []

    async def serve() -> None:
        server = uvicorn.Server(uvicorn.Config(make_app(), host="127.0.0.1", port=port, log_config=None,
                                               access_log=False))
        servers.append(server)
        await server.serve()

    def run() -> None:
        try:
            asyncio.run(serve())
        except BaseException as exc:  # reported by the waiting test
            failures.append(exc)

    thread = threading.Thread(target=run, name=f"uvicorn-{port}", daemon=True)
    thread.start()
    base_url = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: (servers and servers[0].started) or not thread.is_alive(), timeout=timeout,
                 what="the app to start")
        assert servers and servers[0].started, f"the app did not start: {failures!r}"

        def ready() -> bool:
            with contextlib.suppress(httpx.HTTPError):
                return httpx.get(base_url + ready_path, timeout=5).status_code == 200
            return False

        wait_for(ready, timeout=timeout, interval=0.2, what=f"{ready_path} to answer 200")
        yield base_url
    finally:
        for server in servers:
            server.should_exit = True
        thread.join(timeout=30)
