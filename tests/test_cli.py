"""The command line as a user runs it: real subprocesses on a real database file."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import csv
import io
import json
import os
import sqlite3
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import jwt
import pytest
from standardwebhooks.webhooks import Webhook

from gateway.platform.settings import SANDBOX_CREDENTIALS
from gateway.store.sqlite import SqliteStore

from .conftest import JWT_SECRET, Receiver, free_port


async def _create(database: Path) -> None:
    store = SqliteStore(str(database))
    await store.open()  # what `serve` does at its first start: the file, migrated
    await store.close()


def env_for(tmp_path: Path, **extra: str) -> dict[str, str]:
    """The CLI's environment, on a database that `serve` has created (made here if missing)."""
    database = tmp_path / "cli.db"
    if not database.exists():  # (on a thread: some callers run inside an event loop)
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            pool.submit(asyncio.run, _create(database)).result()
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("GATEWAY_") and not k.lower().endswith("_proxy")
    }
    env.update({"GATEWAY_DATABASE": str(database), "GATEWAY_JWT_SECRET": JWT_SECRET})
    env.update(extra)
    return env


def run(
    tmp_path: Path, *args: str, env: dict[str, str] | None = None, ok: bool = True
) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [sys.executable, "-m", "gateway", *args],
        capture_output=True,
        text=True,
        env=env or env_for(tmp_path),
        timeout=60,
        check=False,
    )
    if ok:
        assert result.returncode == 0, result.stderr
    return result


def test_team_lifecycle(tmp_path: Path) -> None:
    created = json.loads(
        run(
            tmp_path,
            "team",
            "create",
            "payments",
            "--name",
            "Payments",
            "--daily-limit",
            "1000",
            "--monthly-budget",
            "500000",
            "--callback-url",
            "https://pay.internal/sms",
        ).stdout
    )
    assert created["id"] == "payments" and created["daily_limit"] == 1000
    assert created["webhook_secret"].startswith("whsec_")
    table = run(tmp_path, "team", "list").stdout
    assert "payments" in table and "Payments" in table and "whsec_" not in table
    updated = json.loads(
        run(
            tmp_path,
            "team",
            "update",
            "payments",
            "--daily-limit",
            "none",
            "--monthly-limit",
            "20000",
            "--inactive",
        ).stdout
    )
    assert updated["daily_limit"] is None and updated["monthly_limit"] == 20000
    assert updated["active"] is False
    run(tmp_path, "team", "update", "payments", "--active")
    disabled = json.loads(run(tmp_path, "team", "disable", "payments").stdout)
    assert disabled["active"] is False
    rotated = json.loads(run(tmp_path, "team", "rotate-secret", "payments").stdout)
    assert rotated["webhook_secret"] != created["webhook_secret"]
    listed = json.loads(run(tmp_path, "team", "list", "--json").stdout)
    assert [t["id"] for t in listed] == ["payments"]


def test_token_issue(tmp_path: Path) -> None:
    run(tmp_path, "team", "create", "payments")
    token = run(tmp_path, "token", "issue", "--team", "payments", "--ttl", "15m").stdout.strip()
    claims = jwt.decode(token, JWT_SECRET, algorithms=["HS256"], audience="sms-gateway")
    assert claims["sub"] == "payments" and claims["scope"] == "messages:send messages:read"
    assert 890 <= claims["exp"] - time.time() <= 900
    admin = run(tmp_path, "token", "issue", "--team", "ops", "--scope", "admin").stdout.strip()
    assert (
        jwt.decode(admin, JWT_SECRET, algorithms=["HS256"], audience="sms-gateway")["scope"]
        == "admin"
    )


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("team", "update", "ghost", "--name", "x"), "no team 'ghost'"),
        (("team", "create", "Bad Id"), "id: must be a slug"),
        (("team", "update", "ghost"), "nothing to change"),
        (("token", "issue", "--team", "ghost"), "no team 'ghost'"),
        (("token", "issue", "--team", "x", "--scope", "admin root"), "unknown scope"),
        (("team", "create"), "the following arguments are required: id"),
        (("team", "create", "x", "--daily-limit", "lots"), "is not a whole number"),
        (("usage", "--bogus"), "unrecognized arguments: --bogus"),
        (("frobnicate",), "invalid choice"),
    ],
)
def test_errors_are_one_line(tmp_path: Path, args: tuple[str, ...], message: str) -> None:
    result = run(tmp_path, *args, ok=False)
    assert result.returncode != 0
    assert message in result.stderr
    assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({}, "GATEWAY_PROVIDER_API_KEY, GATEWAY_PROVIDER_USERNAME, GATEWAY_PROVIDER_PASSWORD"),
        (
            {
                "GATEWAY_PROVIDER_API_KEY": "k",
                "GATEWAY_PROVIDER_USERNAME": "u",
                "GATEWAY_PROVIDER_PASSWORD": "p",
                "GATEWAY_SECRET_KEY": "k" * 32,
                "GATEWAY_JWT_SECRET": "too-short",
            },
            "32 bytes",
        ),
        (
            {
                "GATEWAY_PROVIDER_API_KEY": "k",
                "GATEWAY_PROVIDER_USERNAME": "u",
                "GATEWAY_PROVIDER_PASSWORD": "p",
                "GATEWAY_SECRET_KEY": "k" * 32,
                "GATEWAY_JWT_SECRET": "",
            },
            "no JWT key",
        ),
        (
            {
                "GATEWAY_PROVIDER_API_KEY": "k",
                "GATEWAY_PROVIDER_USERNAME": "u",
                "GATEWAY_PROVIDER_PASSWORD": "p",
                "GATEWAY_SECRET_KEY": "k" * 32,
                "HTTPS_PROXY": "socks5://127.0.0.1:1080",
            },
            "HTTPS_PROXY / HTTP_PROXY: unusable proxy URL socks5://127.0.0.1:1080",
        ),
    ],
)
def test_serve_refuses_unusable_settings(tmp_path: Path, env: dict[str, str], message: str) -> None:
    result = run(tmp_path, "serve", env=env_for(tmp_path, **env), ok=False)
    assert result.returncode == 2
    assert message in result.stderr
    assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_every_command_has_help(tmp_path: Path) -> None:
    for args in (
        ("--help",),
        ("serve", "--help"),
        ("team", "create", "--help"),
        ("team", "list", "--help"),
        ("team", "update", "--help"),
        ("team", "disable", "--help"),
        ("team", "rotate-secret", "--help"),
        ("token", "issue", "--help"),
        ("usage", "--help"),
    ):
        assert "usage: sms-gateway" in run(tmp_path, *args).stdout


@contextlib.asynccontextmanager
async def sandbox_process(
    tmp_path: Path, port: int, logs: list[str]
) -> AsyncIterator[tuple[str, str, str]]:
    """`sms-gateway serve --sandbox` as a real process; yields its URL and printed tokens."""
    env = env_for(tmp_path, GATEWAY_PORT=str(port), GATEWAY_SANDBOX_DLR_DELAY="0.1")
    del env["GATEWAY_JWT_SECRET"]  # the sandbox keeps its own key and prints tokens
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "gateway",
        "serve",
        "--sandbox",
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    assert proc.stdout is not None
    token = admin = ""
    try:
        async with asyncio.timeout(30):
            while True:
                line = (await proc.stdout.readline()).decode()
                assert line, "the sandbox exited before printing a token"
                if line.strip().startswith("token:"):
                    token = line.split()[1]
                if line.strip().startswith("admin token:"):
                    admin = line.split()[2]
                if line.strip().startswith("dashboard:"):
                    break
            async with aiohttp.ClientSession() as http:
                while True:  # the banner is printed just before the port listens
                    with contextlib.suppress(aiohttp.ClientError):
                        async with http.get(f"http://127.0.0.1:{port}/healthz") as resp:
                            if resp.status == 200:
                                break
                    await asyncio.sleep(0.05)
        yield f"http://127.0.0.1:{port}", token, admin
    finally:
        proc.terminate()
        await proc.wait()
        assert proc.stderr is not None
        logs.append((await proc.stderr.read()).decode())


@pytest.fixture
async def sandbox(tmp_path: Path) -> AsyncIterator[tuple[str, str, str]]:
    """A running sandbox; its log must show DLRs and no provider password."""
    logs: list[str] = []
    async with sandbox_process(tmp_path, free_port(), logs) as running:
        yield running
    assert "/dlr/" in logs[0] and SANDBOX_CREDENTIALS[2] not in logs[0]


async def test_sandbox_tokens_survive_a_restart_and_the_cli_can_sign(tmp_path: Path) -> None:
    logs: list[str] = []
    port = free_port()
    env = env_for(tmp_path)
    del env["GATEWAY_JWT_SECRET"]
    async with aiohttp.ClientSession() as http:
        async with sandbox_process(tmp_path, port, logs) as (url, token, _):
            issued = await asyncio.to_thread(
                run, tmp_path, "token", "issue", "--team", "sandbox", env=env
            )
            for bearer in (token, issued.stdout.strip()):
                async with http.get(
                    f"{url}/usage", headers={"Authorization": f"Bearer {bearer}"}
                ) as resp:
                    assert resp.status == 200, await resp.text()
        async with sandbox_process(tmp_path, port, logs) as (url, second, _):
            assert second != ""
            async with http.get(
                f"{url}/usage", headers={"Authorization": f"Bearer {token}"}
            ) as resp:
                assert resp.status == 200  # the first run's token still works
    assert all(token not in log for log in logs)


async def test_sandbox_send_deliver_and_look_up(
    sandbox: tuple[str, str, str], tmp_path: Path, receiver: Receiver
) -> None:
    url, token, admin_token = sandbox
    headers = {"Authorization": f"Bearer {token}"}
    admin = {"Authorization": f"Bearer {admin_token}"}
    async with aiohttp.ClientSession() as http:
        async with http.patch(
            f"{url}/admin/teams/sandbox", headers=admin, json={"callback_url": receiver.url}
        ) as resp:
            assert resp.status == 200
        async with http.post(f"{url}/admin/teams/sandbox/webhook-secret", headers=admin) as resp:
            secret = (await resp.json())["webhook_secret"]
        async with http.post(
            f"{url}/messages",
            headers=headers,
            json={
                "to": ["0788123456", "0788123413", "0788123499"],
                "text": "Hello from the sandbox",
            },
        ) as resp:
            body: dict[str, Any] = await resp.json()
            assert resp.status == 201, body
        assert [m["status"] for m in body["messages"]] == ["sent", "failed", "sent"]
        assert [m["cost"] for m in body["messages"]] == [75, 0, 75]
        await receiver.wait_for(3)  # failed at once; delivered and undelivered from the DLRs
        events = {}
        for delivery_headers, delivery in receiver.received:
            payload = Webhook(secret).verify(delivery, delivery_headers)
            events[payload["data"]["to"]] = payload["type"]
        assert events == {
            "250788123456": "message.delivered",
            "250788123413": "message.failed",
            "250788123499": "message.undelivered",
        }
        async with http.get(f"{url}/messages/{body['messages'][0]['id']}", headers=headers) as resp:
            assert resp.status == 200
            stored = await resp.json()
        assert stored["status"] == "delivered"
        assert [e["status"] for e in stored["events"]] == ["sending", "sent", "delivered"]
        async with http.get(f"{url}/healthz") as resp:
            assert resp.status == 200
    # The CLI reads the same database while the server runs.
    month = body["messages"][0]["created_at"][:7]
    report = await asyncio.to_thread(run, tmp_path, "usage", "--month", month, "--csv")
    rows = list(csv.DictReader(io.StringIO(report.stdout)))
    assert rows == [
        {"team": "sandbox", "messages": "2", "segments": "2", "cost": "150", "currency": "RWF"}
    ]
    table = (await asyncio.to_thread(run, tmp_path, "usage", "--month", month)).stdout
    assert "sandbox" in table and "150" in table


def test_usage_rejects_a_bad_month(tmp_path: Path) -> None:
    result = run(tmp_path, "usage", "--month", "2026-13", ok=False)
    assert result.returncode == 2 and "month must look like" in result.stderr


async def test_backup_of_a_live_database_under_load(
    make_client: Any, provider: Any, settings: Any, tmp_path: Path
) -> None:
    from .conftest import auth, create_team, ledger_mismatches, mint

    client = await make_client()
    await create_team(client, "payments")
    for n in range(300):  # something to copy: a few thousand pages
        resp = await client.post(
            "/messages",
            json={"to": [f"0788{n:03d}{r:03d}" for r in range(1, 8)], "text": "x" * 300},
            headers=auth(mint("payments")),
        )
        assert resp.status == 201
    stop = asyncio.Event()

    async def load() -> int:
        sent = 0
        while not stop.is_set():
            resp = await client.post(
                "/messages", json={"to": "0788999001", "text": "x"}, headers=auth(mint("payments"))
            )
            sent += resp.status == 201
        return sent

    running = asyncio.ensure_future(load())
    dest = tmp_path / "copy.db"
    env = {**env_for(tmp_path), "GATEWAY_DATABASE": settings.database}
    result = await asyncio.to_thread(run, tmp_path, "backup", str(dest), env=env)
    stop.set()
    assert await running > 0  # the server kept sending meanwhile
    assert "integrity ok" in result.stdout
    assert "(100 %)" in result.stderr  # progress was shown
    import sqlite3

    with sqlite3.connect(dest) as copy:
        assert copy.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        assert copy.execute("SELECT COUNT(*) FROM messages").fetchone()[0] >= 2100
    assert ledger_mismatches(str(dest)) == []  # a consistent snapshot: counters = rows
    again = await asyncio.to_thread(run, tmp_path, "backup", str(dest), env=env, ok=False)
    assert "exists already" in again.stderr
    missing = {**env, "GATEWAY_DATABASE": str(tmp_path / "nope.db")}
    nothing = await asyncio.to_thread(
        run, tmp_path, "backup", str(tmp_path / "b.db"), env=missing, ok=False
    )
    assert "no database at" in nothing.stderr


@pytest.mark.parametrize(
    "args",
    [
        ("team", "list"),
        ("team", "create", "payments"),
        ("usage",),
        ("token", "issue", "--team", "x"),
    ],
)
def test_commands_refuse_a_database_that_does_not_exist(
    tmp_path: Path, args: tuple[str, ...]
) -> None:
    missing = tmp_path / "typo.db"
    result = run(
        tmp_path, *args, env={**env_for(tmp_path), "GATEWAY_DATABASE": str(missing)}, ok=False
    )
    assert result.returncode == 2
    assert len(result.stderr.strip().splitlines()) == 1
    assert "no database at" in result.stderr and "serve" in result.stderr
    assert not missing.exists()  # nothing was created


def test_the_cli_works_against_postgresql(tmp_path: Path, pg_database: str) -> None:
    env = env_for(tmp_path, GATEWAY_DATABASE=pg_database)
    created = json.loads(
        run(tmp_path, "team", "create", "payments", "--daily-limit", "5", env=env).stdout
    )
    assert created["id"] == "payments" and created["webhook_secret"].startswith("whsec_")
    assert "payments" in run(tmp_path, "team", "list", env=env).stdout
    token = run(tmp_path, "token", "issue", "--team", "payments", env=env).stdout.strip()
    assert jwt.decode(token, JWT_SECRET, algorithms=["HS256"], audience="sms-gateway")["sub"]
    updated = run(tmp_path, "team", "update", "payments", "--monthly-limit", "9", env=env)
    assert json.loads(updated.stdout)["monthly_limit"] == 9
    assert "payments" in run(tmp_path, "usage", env=env).stdout
    again = run(tmp_path, "team", "create", "payments", env=env, ok=False)
    assert again.returncode != 0 and again.stderr.count("\n") == 1, again.stderr
    assert "already exists" in again.stderr
    missing = run(tmp_path, "team", "disable", "nobody", env=env, ok=False)
    assert missing.returncode != 0 and "no team 'nobody'" in missing.stderr
    copy = run(tmp_path, "backup", str(tmp_path / "copy"), env=env, ok=False)
    assert copy.returncode != 0 and "pg_dump" in copy.stderr and copy.stderr.count("\n") == 1
    assert not (tmp_path / "copy").exists()


def test_an_unreachable_postgresql_is_one_line_without_its_password(tmp_path: Path) -> None:
    url = f"postgresql://gateway:hunter2-secret@127.0.0.1:{free_port()}/gateway"
    result = run(tmp_path, "team", "list", env=env_for(tmp_path, GATEWAY_DATABASE=url), ok=False)
    assert result.returncode != 0 and result.stderr.count("\n") == 1, result.stderr
    assert "cannot open database" in result.stderr and "hunter2-secret" not in result.stderr


def test_webhook_endpoints_from_the_command_line(tmp_path: Path) -> None:
    env = env_for(tmp_path, GATEWAY_SECRET_KEY="cli-sealing-key-" + "7" * 32)
    run(tmp_path, "team", "create", "payments", env=env)
    added = json.loads(
        run(
            tmp_path,
            "endpoint",
            "add",
            "payments",
            "https://ops.internal/sms-failures",
            "--events",
            "message.failed,message.undelivered",
            "--description",
            "ops",
            env=env,
        ).stdout
    )
    assert added["secret"].startswith("whsec_") and added["events"] == [
        "message.failed",
        "message.undelivered",
    ]
    listed = json.loads(run(tmp_path, "endpoint", "list", "--team", "payments", env=env).stdout)
    assert [e["id"] for e in listed] == [added["id"]] and "secret" not in listed[0]
    bad = run(
        tmp_path,
        "endpoint",
        "add",
        "payments",
        "https://x.internal",
        "--events",
        "nope",
        env=env,
        ok=False,
    )
    assert bad.returncode == 2 and "--events" in bad.stderr
    disabled = json.loads(run(tmp_path, "endpoint", "disable", added["id"], env=env).stdout)
    assert disabled["enabled"] is False and disabled["disabled_reason"] == "operator"
    # a delivery that failed before: recover queues it again (and enables the endpoint)
    with sqlite3.connect(tmp_path / "cli.db") as db:
        db.execute(
            "INSERT INTO webhooks (id, team_id, type, url, payload, status, attempts,"
            " created_at, endpoint_id) VALUES ('whk_01M917A0000000000000000000', 'payments',"
            " 'message.failed', 'https://ops.internal/sms-failures', '{}', 'failed', 10,"
            " '2026-12-01T10:00:00.000Z', ?)",
            (added["id"],),
        )
    out = run(tmp_path, "endpoint", "recover", added["id"], "--since", "2026-01-01", env=env)
    assert out.stdout.startswith("1 failed deliveries queued again")
    with sqlite3.connect(tmp_path / "cli.db") as db:
        assert db.execute("SELECT status, attempts FROM webhooks").fetchall() == [("pending", 0)]
    enabled = json.loads(run(tmp_path, "endpoint", "enable", added["id"], env=env).stdout)
    assert enabled["enabled"] is True
    rotated = json.loads(run(tmp_path, "endpoint", "rotate", added["id"], env=env).stdout)
    assert rotated["secret"] != added["secret"] and rotated["previous_secret_valid_until"]
    run(tmp_path, "endpoint", "remove", added["id"], env=env)
    gone = run(tmp_path, "endpoint", "remove", added["id"], env=env, ok=False)
    assert gone.returncode == 2 and "no webhook endpoint" in gone.stderr
    actions = json.loads(run(tmp_path, "audit", "--json", env=env).stdout)
    assert [a["action"] for a in actions if a["target"] == added["id"]][::-1] == [
        "webhook_endpoint.created",
        "webhook_endpoint.disabled",
        "webhook_endpoint.recovered",
        "webhook_endpoint.secret_rotated",
        "webhook_endpoint.deleted",
    ]
