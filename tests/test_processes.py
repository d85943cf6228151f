"""Several `sms-gateway serve` processes on one database: on a SQLite file (a deploy overlap, a
second start by mistake) and as replicas on one PostgreSQL database. Leases keep each one's
sends its own, and shared work is done once."""

from __future__ import annotations

import asyncio
import json
import signal
import sqlite3
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from gateway.store.migrations import MIGRATIONS

from .conftest import (
    POSTGRES,
    FakeProvider,
    Receiver,
    drop_postgres_database,
    free_port,
    gateway_process,
    ledger_mismatches,
    mint,
    new_postgres_database,
    query,
    serve_env,
)

both = pytest.mark.both_databases

ADMIN = {"Authorization": f"Bearer {mint('root', 'admin')}"}
SEND = {"Authorization": f"Bearer {mint('payments')}"}


def rows(database: str, sql: str) -> list[tuple[Any, ...]]:
    return query(database, sql)


async def make_team(http: aiohttp.ClientSession, base: str, **fields: Any) -> None:
    async with http.post(
        f"{base}/admin/teams", json={"id": "payments", **fields}, headers=ADMIN
    ) as resp:
        assert resp.status == 201, await resp.text()


@both
async def test_a_second_process_leaves_a_live_send_alone(
    database: str, database_kind: str, tmp_path: Path, provider: FakeProvider
) -> None:
    first, second = free_port(), free_port()
    provider.delay = 2.0  # the send is in flight while the second process starts
    async with aiohttp.ClientSession() as http:
        async with gateway_process(serve_env(database, first, provider.url), first):
            base = f"http://127.0.0.1:{first}"
            await make_team(http, base)
            sending = asyncio.ensure_future(
                http.post(f"{base}/messages", json={"to": "0788000001", "text": "hi"}, headers=SEND)
            )
            while not provider.calls:
                await asyncio.sleep(0.02)
            async with gateway_process(serve_env(database, second, provider.url), second):
                assert rows(database, "SELECT status FROM messages") == [("sending",)]
                resp = await sending
                answer = await resp.json()
                assert resp.status == 201, answer
                [message] = answer["messages"]
                assert message["status"] == "sent" and message["provider_message_id"]
                url = f"http://127.0.0.1:{second}/messages/{message['id']}"
                async with http.get(url, headers=SEND) as resp:
                    assert (await resp.json())["status"] == "sent"
    assert ledger_mismatches(database) == []
    assert rows(database, "SELECT messages, cost FROM usage") == [(1, 75), (1, 75)]


@both
async def test_a_killed_process_is_swept_by_a_running_one(
    database: str, database_kind: str, tmp_path: Path, provider: FakeProvider
) -> None:
    first, second = free_port(), free_port()
    provider.delay = 30.0  # the first process dies before the provider answers
    env = {"lease_seconds": "3"}
    send = {**SEND, "Idempotency-Key": "otp-1"}
    body = {"to": "0788000001", "text": "Your code is 1234"}
    async with aiohttp.ClientSession() as http:
        survivor = gateway_process(serve_env(database, second, provider.url, **env), second)
        async with gateway_process(serve_env(database, first, provider.url, **env), first) as p:
            await make_team(http, f"http://127.0.0.1:{first}")
            async with survivor:
                sending = asyncio.ensure_future(
                    http.post(f"http://127.0.0.1:{first}/messages", json=body, headers=send)
                )
                while not provider.calls:
                    await asyncio.sleep(0.02)
                p.send_signal(signal.SIGKILL)
                await p.wait()
                sending.cancel()
                base = f"http://127.0.0.1:{second}"
                async with asyncio.timeout(20):  # swept by the survivor, not at a restart
                    while rows(database, "SELECT 1 FROM messages WHERE status = 'sending'"):
                        await asyncio.sleep(0.1)
                async with http.post(f"{base}/messages", json=body, headers=send) as resp:
                    replay = await resp.json()
                    assert resp.status == 504, replay
                    assert resp.headers["Idempotent-Replayed"] == "true"
                [message] = replay["messages"]
                assert message["status"] == "unknown"
                assert message["error"]["code"] == "interrupted" and message["cost"] == 75
    assert len(provider.calls) == 1
    assert ledger_mismatches(database) == []


@both
async def test_two_processes_deliver_each_webhook_once(
    database: str, database_kind: str, tmp_path: Path, provider: FakeProvider, receiver: Receiver
) -> None:
    first, second = free_port(), free_port()
    env = {"webhook_retry_schedule": "0,6,1,1"}  # retries due after both workers looked
    receiver.failures = 100  # every first attempt fails, so all retries fall due together
    refused = [f"0788{n:03d}013" for n in range(100)]  # the provider refuses each: 100 hooks
    async with aiohttp.ClientSession() as http:
        async with (
            gateway_process(serve_env(database, first, provider.url, **env), first),
            gateway_process(serve_env(database, second, provider.url, **env), second),
        ):
            await make_team(http, f"http://127.0.0.1:{first}", callback_url=receiver.url)
            async with http.post(
                f"http://127.0.0.1:{second}/messages",
                json={"to": refused, "text": "x"},
                headers=SEND,
            ) as resp:
                assert resp.status == 201  # answered per recipient: each one refused
            await receiver.wait_for(200, timeout=30)
            await asyncio.sleep(1.5)  # anything delivered twice would have arrived by now
    attempts = Counter(headers["webhook-id"] for headers, _ in receiver.received)
    assert len(attempts) == 100
    assert set(attempts.values()) == {2}  # one failed attempt and one delivery each
    assert rows(database, "SELECT status, COUNT(*) FROM webhooks GROUP BY 1") == [
        ("delivered", 100)
    ]


@both
async def test_a_team_changed_through_one_process_is_seen_by_the_other(
    database: str, database_kind: str, tmp_path: Path, provider: FakeProvider
) -> None:
    first, second = free_port(), free_port()
    body = {"to": "0788000001", "text": "hi"}
    async with aiohttp.ClientSession() as http:
        async with (
            gateway_process(serve_env(database, first, provider.url), first),
            gateway_process(serve_env(database, second, provider.url), second),
        ):
            one, two = f"http://127.0.0.1:{first}", f"http://127.0.0.1:{second}"
            await make_team(http, one)
            async with http.post(f"{two}/messages", json=body, headers=SEND) as resp:
                assert resp.status == 201  # the other process knows the team at once
            async with http.patch(
                f"{one}/admin/teams/payments", json={"active": False}, headers=ADMIN
            ) as resp:
                assert resp.status == 200
            async with http.post(f"{two}/messages", json=body, headers=SEND) as resp:
                assert resp.status == 403 and (await resp.json())["code"] == "team_disabled"
            async with http.get(f"{two}/messages", headers=SEND) as resp:
                assert resp.status == 403
            async with http.patch(
                f"{one}/admin/teams/payments",
                json={"active": True, "rate_limit_per_second": 0.001},
                headers=ADMIN,
            ) as resp:
                assert resp.status == 200
            async with http.get(f"{two}/usage", headers=SEND) as resp:
                assert resp.status == 200  # the bucket starts full: one request
            async with http.get(f"{two}/usage", headers=SEND) as resp:
                assert resp.status == 429  # the new rate applies on the other process too
    assert len(provider.calls) == 1


@both
async def test_processes_starting_together_on_a_new_database(
    database_kind: str, tmp_path: Path, provider: FakeProvider
) -> None:
    for attempt in range(3):
        if database_kind == "postgresql":
            database = new_postgres_database(POSTGRES)
            version = "SELECT version FROM schema_version"
        else:
            database = str(tmp_path / f"new-{attempt}.db")
            version = "PRAGMA user_version"
        ports = [free_port() for _ in range(3)]
        try:
            async with aiohttp.ClientSession() as http:
                starts = [
                    gateway_process(serve_env(database, port, provider.url), port) for port in ports
                ]
                procs = await asyncio.gather(*(s.__aenter__() for s in starts))
                try:
                    assert all(p.returncode is None for p in procs)
                    await make_team(http, f"http://127.0.0.1:{ports[0]}")
                    for port in ports:
                        url = f"http://127.0.0.1:{port}/usage"
                        async with http.get(url, headers=SEND) as resp:
                            assert resp.status == 200
                finally:
                    for s in starts:
                        await s.__aexit__(None, None, None)
            assert rows(database, version) == [(len(MIGRATIONS),)]
        finally:
            if database_kind == "postgresql":
                drop_postgres_database(POSTGRES, database)


async def test_a_database_newer_than_the_code_is_refused_and_left_alone(tmp_path: Path) -> None:
    database = tmp_path / "gateway.db"
    with sqlite3.connect(database) as conn:
        conn.execute("CREATE TABLE from_the_future (x)")
        conn.execute("PRAGMA user_version = 99")
    before = database.read_bytes()
    port = free_port()
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "gateway",
        "serve",
        env=serve_env(str(database), port, "http://127.0.0.1:9/api/v2/sms/send"),
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    _, stderr = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 2
    lines = [line for line in stderr.decode().splitlines() if "error:" in line]
    assert len(lines) == 1 and "newer than this gateway" in lines[0], stderr
    assert "Traceback" not in stderr.decode()
    assert database.read_bytes() == before


async def test_the_server_writes_only_json_lines(tmp_path: Path, provider: FakeProvider) -> None:
    port = free_port()
    log_path = tmp_path / "gateway.log"
    base = f"http://127.0.0.1:{port}"
    with log_path.open("wb") as log:
        async with gateway_process(
            serve_env(str(tmp_path / "gateway.db"), port, provider.url), port, log, log
        ) as proc:
            async with aiohttp.ClientSession() as http:
                await make_team(http, base)
                async with http.post(
                    f"{base}/messages", json={"to": "0788000001", "text": "hi"}, headers=SEND
                ) as resp:
                    assert resp.status == 201
            # What the parser refuses is problem+json too, and never echoes what was sent (an
            # Authorization header among it); no answer names a software version.
            secret = b"Bearer eyJhbGciOiJIUzI1NiJ9.secret-part"
            for header, status in (
                (b"Authorization: " + secret + b"a" * 9000, b"431"),
                (b"Authorization: " + secret + b"\x00b", b"400"),
            ):
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
                try:
                    writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n" + header + b"\r\n\r\n")
                    await writer.drain()
                    answer = await asyncio.wait_for(reader.read(), 10)
                finally:
                    writer.close()
                    await writer.wait_closed()
                head, _, body = answer.partition(b"\r\n\r\n")
                assert head.split()[1:2] == [status], answer
                assert b"content-type: application/problem+json" in head.lower()
                assert b"server: sms-gateway\r\n" in head.lower() + b"\r\n"
                assert json.loads(body)["status"] == int(status)
                assert b"secret-part" not in answer and b"aaaa" not in answer
            proc.send_signal(signal.SIGTERM)
            await asyncio.wait_for(proc.wait(), 20)
    logged = log_path.read_text()
    lines = [json.loads(line) for line in logged.splitlines()]  # stdout and stderr: all JSON
    start = next(line for line in lines if line.get("event") == "start")
    assert start["listen"] == f"127.0.0.1:{port}" and start["database"] == "sqlite"
    assert start["sandbox"] is False and start["version"]
    assert lines[-1]["event"] == "stop"
    send = next(line for line in lines if line.get("path") == "/messages")  # one line a send
    assert send["status"] == 201 and send["team"] == "payments" and send["outcome"] == "sent"
    assert send["batch_id"].startswith("bat_") and send["recipients"] == 1
    warnings = [line for line in lines if "HTTP parser" in line["message"]]
    assert len(warnings) == 2 and all(w["level"] == "warning" for w in warnings), logged
    assert "Traceback" not in logged and not [line for line in lines if line["level"] == "error"]
