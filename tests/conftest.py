"""Shared fixtures: a fake provider on a real port, the gateway through create_app, JWT minting."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import socket
import sqlite3
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from datetime import datetime
from importlib import resources
from pathlib import Path
from typing import IO, Any
from urllib.parse import urlsplit, urlunsplit

import aiohttp
import asyncpg
import jwt
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from gateway.app import create_app
from gateway.platform.clock import Clock, utcnow
from gateway.platform.logs import AccessLogger
from gateway.platform.settings import Settings
from gateway.store import is_postgres
from gateway.store import messages as store_messages
from gateway.store.migrations import MIGRATIONS
from gateway.store.postgres import postgres_sql
from gateway.store.sqlite import statements

SECRET_KEY = "test-sealing-key-" + "5" * 32  # GATEWAY_SECRET_KEY of the tests
JWT_SECRET = "test-secret-that-is-long-enough-for-hs256-0123456789"
API_KEY = "prov-api-key-7f3a9c"
USERNAME = "acme-account"
PASSWORD = "prov-password-s3cr3t-91"

ClientFactory = Callable[..., Awaitable[TestClient[web.Request, web.Application]]]

# The PostgreSQL server the tests make their throwaway databases on (trust auth, as on CI).
POSTGRES = os.environ.get("GATEWAY_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/postgres")


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Tests marked `both_databases` run on SQLite and on PostgreSQL (`database_kind`), those
    marked `postgresql` on PostgreSQL only, the rest on SQLite."""
    if "database_kind" in metafunc.fixturenames:
        kinds = ["sqlite"]
        if metafunc.definition.get_closest_marker("postgresql"):
            kinds = ["postgresql"]
        elif metafunc.definition.get_closest_marker("both_databases"):
            kinds = ["sqlite", "postgresql"]
        metafunc.parametrize("database_kind", kinds, ids=kinds if len(kinds) > 1 else None)


@pytest.fixture(scope="session")
def postgres_server() -> str:
    """The PostgreSQL server's URL. Without one the test skips, except under CI=true, where
    it fails: CI runs every PostgreSQL test."""

    async def check() -> None:
        conn = await asyncpg.connect(POSTGRES, timeout=5)
        await conn.close()

    try:
        asyncio.run(check())
    except Exception as exc:
        reason = f"no PostgreSQL at {POSTGRES} ({type(exc).__name__}: {exc})"
        if os.environ.get("CI") == "true":
            pytest.fail(reason + "; CI must run the PostgreSQL tests")
        pytest.skip(reason + "; set GATEWAY_TEST_POSTGRES to run these tests")
    return POSTGRES


def _in_thread(work: Callable[[], Awaitable[Any]]) -> Any:
    """Run `work()` on its own event loop in another thread (from sync code or a test's loop)."""
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(lambda: asyncio.run(work())).result()  # type: ignore[arg-type]


def _on_server(server: str, sql: str) -> None:
    """Run one statement as the server's administrator (outside any transaction)."""

    async def run() -> None:
        conn = await asyncpg.connect(server)
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    _in_thread(run)


def new_postgres_database(server: str) -> str:
    """A new, empty database on the server; its URL."""
    name = "gw_test_" + secrets.token_hex(6)
    _on_server(server, f'CREATE DATABASE "{name}"')
    return urlunsplit(urlsplit(server)._replace(path="/" + name))


def drop_postgres_database(server: str, url: str) -> None:
    """Drop a database made by new_postgres_database (its connections are ended first)."""
    name = urlsplit(url).path.lstrip("/")
    _on_server(server, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


_finished: list[str] = []  # databases of tests that ended, dropped when the next one starts


@pytest.fixture
def pg_database(postgres_server: str) -> Iterator[str]:
    """A throwaway PostgreSQL database for one test. It is dropped when the next test makes
    its own (or at the end of the run): by then the test's gateways have stopped, since the
    aiohttp client fixture closes them after this fixture's own teardown."""
    while _finished:
        drop_postgres_database(postgres_server, _finished.pop())
    url = new_postgres_database(postgres_server)
    yield url
    _finished.append(url)


@pytest.fixture(scope="session", autouse=True)
def _drop_finished_databases() -> Iterator[None]:
    yield
    while _finished:
        drop_postgres_database(POSTGRES, _finished.pop())


@pytest.fixture
def database_kind() -> str:
    """Which database a test's gateway uses (parametrized by `both_databases`)."""
    return "sqlite"


@pytest.fixture
def database(request: pytest.FixtureRequest, tmp_path: Path, database_kind: str) -> str:
    """GATEWAY_DATABASE for this test: a SQLite file, or a throwaway PostgreSQL database."""
    if database_kind == "postgresql":
        return str(request.getfixturevalue("pg_database"))
    return str(tmp_path / "gateway.db")


def query(database: str, sql: str, *params: Any) -> list[tuple[Any, ...]]:
    """The rows of a read on either database, as tuples (from sync code or a test's loop)."""
    if not is_postgres(database):
        with sqlite3.connect(database) as conn:
            return conn.execute(sql, params).fetchall()

    async def read() -> list[tuple[Any, ...]]:
        conn = await asyncpg.connect(database)
        try:
            return [tuple(r) for r in await conn.fetch(postgres_sql(sql), *params)]
        finally:
            await conn.close()

    rows: list[tuple[Any, ...]] = _in_thread(read)
    return rows


def pytest_asyncio_loop_factories(
    config: pytest.Config, item: pytest.Item
) -> dict[str, Callable[[], asyncio.AbstractEventLoop]]:
    """Tests run on uvloop, the loop `sms-gateway serve` uses; those marked `both_loops` run
    on asyncio's own loop too (the gateway falls back to it where uvloop is missing)."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover - not on Linux or macOS
        return {"asyncio": asyncio.new_event_loop}
    if item.get_closest_marker("both_loops"):
        return {"uvloop": uvloop.new_event_loop, "asyncio": asyncio.new_event_loop}
    return {"uvloop": uvloop.new_event_loop}


def mint(
    sub: str | None = "payments",
    scope: Any = "messages:send messages:read",
    *,
    secret: Any = JWT_SECRET,
    algorithm: str = "HS256",
    headers: dict[str, Any] | None = None,
    **claims: Any,
) -> str:
    """A token as a team's identity provider would issue it."""
    now = int(time.time())
    body: dict[str, Any] = {
        "sub": sub,
        "scope": scope,
        "iat": now,
        "exp": now + 3600,
        "aud": "sms-gateway",
    }
    body.update(claims)
    body = {k: v for k, v in body.items() if v is not None}
    return jwt.encode(body, secret, algorithm=algorithm, headers=headers)


class FixedClock:
    """A clock the test sets by hand."""

    def __init__(self, at: datetime) -> None:
        self.at = at

    def __call__(self) -> datetime:
        return self.at


def auth(token: str) -> dict[str, str]:
    """The Authorization header for a token."""
    return {"Authorization": f"Bearer {token}"}


def _ephemeral_low() -> int:
    """The lowest port the kernel gives outgoing connections' local ends."""
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def free_port() -> int:
    """A port nothing listens on (for a server to take, or for 'connection refused'), picked
    below the kernel's ephemeral range: a port from that range can be taken, between the pick
    and a server's bind, by the local end of any outgoing connection (seen once in CI: a
    `serve` process that could not listen)."""
    low = _ephemeral_low()
    while True:
        port = 10_000 + secrets.randbelow(max(1, low - 10_000))
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port


@dataclass
class FakeProvider:
    """The provider played by a real aiohttp server; `mode` chooses how it answers."""

    mode: str = "success"
    calls: list[dict[str, str]] = field(default_factory=list)
    times: list[float] = field(default_factory=list)  # time.monotonic() of each call's arrival
    failed_suffix: str = "13"
    charge_failed: bool = False
    cost: Any = 75
    delay: float = 0.0
    url: str = ""
    next_id: int = 1000
    error_for: str | None = None  # a call carrying this recipient is refused whole
    dlr: str = "none"  # none | after (report once answered) | before (report before answering)
    dlr_username: str = USERNAME
    dlr_password: str = PASSWORD
    reports: list[int] = field(default_factory=list)  # HTTP status the gateway gave each report
    body: Any = None  # when set, the whole JSON answer to every call, as is
    _tasks: set[asyncio.Task[None]] = field(default_factory=set)

    async def report(self, dlrurl: str, recipient: str, message_id: str) -> int:
        """Call the DLR URL as the provider does (GET, query parameters appended)."""
        params = {
            "dnis": recipient,
            "username": self.dlr_username,
            "password": self.dlr_password,
            "command": "deliver",
            "dlvrMsgId": message_id,
            "dlvrMsgStat": "U" if recipient.endswith("99") else "D",
        }
        async with aiohttp.ClientSession() as http, http.get(dlrurl, params=params) as resp:
            self.reports.append(resp.status)
            return resp.status

    async def settle_reports(self) -> None:
        """Wait for the reports sent in the background."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks))

    async def handle(self, request: web.Request) -> web.StreamResponse:
        self.times.append(time.monotonic())
        form = {k: str(v) for k, v in (await request.post()).items()}
        self.calls.append(form)
        if self.delay:
            await asyncio.sleep(self.delay)
        if self.body is not None:
            return web.json_response(self.body)
        if self.mode == "error" or self.error_for in form["recipients"].split(","):
            return web.json_response({"status": "error", "message": "Insufficient balance"})
        if self.mode == "http401":
            return web.json_response(
                {"status": "error", "message": "Invalid credentials"}, status=401
            )
        if self.mode in ("http429", "http503"):  # busy, in its own words: it took nothing
            return web.json_response(
                {"status": "error", "message": "Too many requests, slow down"},
                status=int(self.mode[4:]),
            )
        if self.mode == "http503-html":  # a 503 from something in front of it
            return web.Response(status=503, text="<html>Service Unavailable</html>")
        if self.mode == "redirect":
            raise web.HTTPFound("https://bulksms.example/api/v3/sms/send")
        if self.mode == "http500":
            return web.Response(status=500, text="Internal Server Error")
        if self.mode == "html":
            return web.Response(
                text="<html><body>Bad gateway</body></html>", content_type="text/html"
            )
        if self.mode == "garbage":
            return web.Response(
                text='{"status": "success", "response": [', content_type="text/json"
            )
        if self.mode == "drop":
            assert request.transport is not None
            request.transport.close()
            return web.Response()
        answers = []
        for recipient in form["recipients"].split(","):
            self.next_id += 1
            failed = recipient.endswith(self.failed_suffix)
            answers.append(
                {
                    "status": "failed" if failed else "sent",
                    "messageid": str(self.next_id),
                    "recipient": recipient,
                    "cost": self.cost if (not failed or self.charge_failed) else 0,
                }
            )
        if self.mode == "partial":
            answers = answers[:-1]
        sent = [
            (str(a["recipient"]), str(a["messageid"])) for a in answers if a["status"] == "sent"
        ]
        if self.dlr == "before" and form.get("dlrurl"):
            for recipient, message_id in sent:
                await self.report(form["dlrurl"], recipient, message_id)
        elif self.dlr == "after" and form.get("dlrurl"):
            for recipient, message_id in sent:
                task = asyncio.get_running_loop().create_task(
                    self._later(form["dlrurl"], recipient, message_id)
                )
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)
        return web.json_response(
            {
                "status": "success",
                "totalmessages": len(answers),
                "totalcost": 0,
                "unit": "RWF",
                "response": answers,
            }
        )

    async def _later(self, dlrurl: str, recipient: str, message_id: str) -> None:
        await asyncio.sleep(0.05)
        await self.report(dlrurl, recipient, message_id)


@dataclass
class Receiver:
    """A team's webhook endpoint: records every delivery; fails while `failures` is above 0."""

    url: str = ""
    failures: int = 0
    status_when_failing: int = 500
    received: list[tuple[dict[str, str], bytes]] = field(default_factory=list)
    arrived: asyncio.Event = field(default_factory=asyncio.Event)

    async def handle(self, request: web.Request) -> web.Response:
        self.received.append((dict(request.headers), await request.read()))
        self.arrived.set()
        if self.failures > 0:
            self.failures -= 1
            return web.Response(status=self.status_when_failing, text="not now")
        return web.Response(status=204)

    async def wait_for(self, count: int, timeout: float = 10.0) -> None:
        """Until `count` deliveries have arrived."""
        async with asyncio.timeout(timeout):
            while len(self.received) < count:
                self.arrived.clear()
                await self.arrived.wait()


@contextlib.asynccontextmanager
async def running_receiver() -> AsyncIterator[Receiver]:
    """A webhook receiver on a real aiohttp server, its URL in `url`."""
    state = Receiver()
    app = web.Application()
    app.router.add_post("/hooks", state.handle)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    state.url = str(server.make_url("/hooks"))
    try:
        yield state
    finally:
        await server.close()


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    """A running webhook receiver."""
    async with running_receiver() as state:
        yield state


def serve_env(
    database: str, port: int, provider_url: str | None = None, **extra: str
) -> dict[str, str]:
    """The environment of an `sms-gateway serve` process in front of a fake provider."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("GATEWAY_") and not k.lower().endswith("_proxy")
    }
    env.update(
        {
            "GATEWAY_PORT": str(port),
            "GATEWAY_DATABASE": database,
            "GATEWAY_JWT_SECRET": JWT_SECRET,
            "GATEWAY_CALLBACK_ALLOWED_NETWORKS": "127.0.0.0/8",
        }
    )
    if provider_url:
        env.update(
            {
                "GATEWAY_PROVIDER_URL": provider_url,
                "GATEWAY_PROVIDER_API_KEY": API_KEY,
                "GATEWAY_PROVIDER_USERNAME": USERNAME,
                "GATEWAY_PROVIDER_PASSWORD": PASSWORD,
                "GATEWAY_SECRET_KEY": SECRET_KEY,
            }
        )
    env.update({f"GATEWAY_{k.upper()}": v for k, v in extra.items()})
    return env


def plain_batch(
    batch_id: str, at: str, messages: list[store_messages.NewMessage]
) -> store_messages.Batch:
    """A batch of team `payments` (text "x", GSM-7, no sender, reference or callback) created
    at `at`, for tests that drive the store directly."""
    return store_messages.Batch(
        batch_id=batch_id,
        team_id="payments",
        text="x",
        sender=None,
        reference=None,
        callback_url=None,
        encoding="gsm7",
        day=at[:10],
        month=at[:7],
        created_at=at,
        messages=messages,
    )


async def wait_until_healthy(port: int, within: float = 30) -> None:
    """Until a server on `port` answers /healthz with 200 (TimeoutError after `within` s)."""
    async with asyncio.timeout(within), aiohttp.ClientSession() as http:
        while True:
            with contextlib.suppress(aiohttp.ClientError):
                async with http.get(f"http://127.0.0.1:{port}/healthz") as resp:
                    if resp.status == 200:
                        return
            await asyncio.sleep(0.05)


@contextlib.asynccontextmanager
async def gateway_process(
    env: dict[str, str],
    port: int,
    stderr: IO[bytes] | None = None,
    stdout: IO[bytes] | None = None,
) -> AsyncIterator[asyncio.subprocess.Process]:
    """`sms-gateway serve` as a real process, yielded once /healthz answers."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "gateway",
        "serve",
        env=env,
        stdout=stdout or asyncio.subprocess.DEVNULL,
        stderr=stderr or asyncio.subprocess.DEVNULL,
    )
    try:
        healthy = asyncio.ensure_future(wait_until_healthy(port))
        exited = asyncio.ensure_future(proc.wait())
        await asyncio.wait({healthy, exited}, return_when=asyncio.FIRST_COMPLETED)
        if not healthy.done():  # it stopped before answering: say so now, not in 30 s
            healthy.cancel()
            raise AssertionError(f"sms-gateway serve exited with {proc.returncode} at start")
        exited.cancel()
        healthy.result()
        yield proc
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


@pytest.fixture
async def provider() -> AsyncIterator[FakeProvider]:
    """A running fake provider."""
    fake = FakeProvider()
    app = web.Application()
    app.router.add_post("/api/v2/sms/send", fake.handle)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    fake.url = str(server.make_url("/api/v2/sms/send"))
    yield fake
    await fake.settle_reports()
    await server.close()


@pytest.fixture
def settings(database: str, provider: FakeProvider) -> Settings:
    """Settings for a gateway in front of the fake provider, with a real SQLite file (or a real
    PostgreSQL database, for tests marked `both_databases`)."""
    return Settings(
        database=database,
        provider_url=provider.url,
        provider_api_key=API_KEY,
        provider_username=USERNAME,
        provider_password=PASSWORD,
        secret_key=SECRET_KEY,
        provider_timeout=2.0,
        public_url="http://gateway.test:8080",
        jwt_secret=JWT_SECRET,
        callback_allowed_networks=("127.0.0.0/8",),  # the receivers run on loopback
    )


@pytest.fixture
def make_client(
    aiohttp_client: Callable[..., Awaitable[TestClient[web.Request, web.Application]]],
    settings: Settings,
) -> ClientFactory:
    """Start the gateway (create_app) with the settings, optionally changed."""

    async def start(
        clock: Clock = utcnow, **changes: Any
    ) -> TestClient[web.Request, web.Application]:
        # A known port, so DLR URLs built on the public URL reach this very server.
        port = free_port()
        changes.setdefault("public_url", f"http://127.0.0.1:{port}")
        the_settings = replace(settings, **changes)
        the_settings.validate()
        server = TestServer(create_app(the_settings, clock=clock), port=port)
        await server.start_server(access_log_class=AccessLogger)  # as `sms-gateway serve` does
        return await aiohttp_client(server)

    return start


async def create_team(
    client: TestClient[web.Request, web.Application], team_id: str, **fields: Any
) -> dict[str, Any]:
    """Register a team through the admin API."""
    resp = await client.post(
        "/admin/teams", json={"id": team_id, **fields}, headers=auth(mint("root", "admin"))
    )
    assert resp.status == 201, await resp.text()
    body: dict[str, Any] = await resp.json()
    return body


@pytest.fixture
async def client(make_client: ClientFactory) -> TestClient[web.Request, web.Application]:
    """A gateway with teams `payments` (senders ACME and Payments) and `alerts` registered."""
    c = await make_client()
    # (granted the sender IDs the tests name; with none named a send goes under the first)
    await create_team(c, "payments", name="Payments", senders=["ACME", "Payments"])
    await create_team(c, "alerts", name="Alerts")
    return c


async def problem(resp: Any, status: int, code: str) -> dict[str, Any]:
    """Assert an RFC 9457 answer with this status and code; return its body."""
    text = await resp.text()
    assert resp.status == status, text
    assert resp.headers["Content-Type"].startswith("application/problem+json")
    body: dict[str, Any] = json.loads(text)
    assert body["status"] == status
    assert body["code"] == code, body
    assert body["title"] and body["detail"] and body["type"]
    return body


def ledger_mismatches(database: str) -> list[str]:
    """Where the usage counters differ from the sum of the messages' charges (empty = exact)."""
    counters = {
        (team, period): (messages, segments, cost)
        for team, period, messages, segments, cost in query(
            database, "SELECT team_id, period, messages, segments, cost FROM usage"
        )
        if (messages, segments, cost) != (0, 0, 0)
    }
    sums: dict[tuple[str, str], tuple[int, int, int]] = {}
    for column in ("day", "month"):
        for team, period, messages, segments, cost in query(
            database,
            f"SELECT team_id, {column},"
            " CAST(SUM(CASE WHEN charged_segments > 0 OR cost > 0 THEN 1 ELSE 0 END) AS BIGINT),"
            " CAST(SUM(charged_segments) AS BIGINT), CAST(SUM(cost) AS BIGINT)"
            f" FROM messages GROUP BY team_id, {column}",
        ):
            if (messages, segments, cost) != (0, 0, 0):
                sums[(team, period)] = (messages, segments, cost)
    return [
        f"{key}: counters {counters.get(key)} != messages {sums.get(key)}"
        for key in sorted(set(counters) | set(sums))
        if counters.get(key) != sums.get(key)
    ]


async def at_schema(database: str, version: int) -> None:
    """A database as an earlier version left it: migrations 1 to `version` only."""
    scripts = resources.files("gateway.store")
    if database.startswith("postgresql"):
        conn = await asyncpg.connect(database)
        try:
            async with conn.transaction():
                for migration in MIGRATIONS[:version]:
                    await conn.execute(scripts.joinpath(migration.postgresql).read_text())
                await conn.execute("CREATE TABLE schema_version (version INTEGER NOT NULL)")
                await conn.execute("INSERT INTO schema_version VALUES ($1)", version)
        finally:
            await conn.close()
        return
    with sqlite3.connect(database) as lite:
        for migration in MIGRATIONS[:version]:
            for statement in statements(scripts.joinpath(migration.sqlite).read_text()):
                lite.execute(statement)
        lite.execute(f"PRAGMA user_version = {int(version)}")


def query_write(database: str, sql: str) -> None:
    """One write on either database, outside the gateway."""
    if database.startswith("postgresql"):

        async def run() -> None:
            conn = await asyncpg.connect(database)
            try:
                await conn.execute(sql)
            finally:
                await conn.close()

        _in_thread(run)
        return
    with sqlite3.connect(database) as conn:
        conn.execute(sql)
