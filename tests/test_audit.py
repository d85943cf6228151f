"""The audit log (SPEC 8): one entry per change through the API and the CLI (the dashboard's
are in test_dashboard.py), written in the change's transaction, never holding a secret,
append-only on both databases, and a chain that `sms-gateway audit verify` proves."""

from __future__ import annotations

import asyncio
import getpass
import json
import sqlite3
import subprocess
import sys
from datetime import UTC, datetime
from typing import Any

import aiohttp
import asyncpg
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from gateway.store import make_store
from gateway.store import teams as store_teams
from gateway.store.audit import Actor, verify

from .conftest import (
    ClientFactory,
    FakeProvider,
    Receiver,
    auth,
    free_port,
    gateway_process,
    mint,
    problem,
    query,
    serve_env,
)
from .test_replicas import two_replicas

pytestmark = pytest.mark.both_databases

Client = TestClient[web.Request, web.Application]
OPS_TOKEN = mint("ops-alice", "admin")
OPS = auth(OPS_TOKEN)


async def entries(client: Client, **filters: str) -> list[dict[str, Any]]:
    resp = await client.get("/admin/audit", params=filters, headers=OPS)
    assert resp.status == 200, await resp.text()
    body: dict[str, Any] = await resp.json()
    return list(body["data"])


def audit_rows(database: str) -> list[tuple[Any, ...]]:
    return query(database, "SELECT * FROM audit_log ORDER BY seq")


async def test_each_admin_change_through_the_api_writes_one_entry(
    make_client: ClientFactory, database: str, receiver: Receiver
) -> None:
    client = await make_client()
    headers = {**OPS, "X-Request-ID": "req-create-1"}
    resp = await client.post(
        "/admin/teams", json={"id": "payments", "daily_limit": 10}, headers=headers
    )
    assert resp.status == 201
    created = await resp.json()
    [entry] = await entries(client)
    assert entry["action"] == "team.created" and entry["target"] == "payments"
    assert (entry["actor"], entry["source"], entry["client"]) == ("ops-alice", "api", "127.0.0.1")
    assert entry["request_id"] == "req-create-1" and entry["team"] == "payments"
    assert entry["before"] is None
    assert entry["after"]["daily_limit"] == 10 and entry["after"]["alert_thresholds"] == [80, 100]
    assert "webhook_secret" not in entry["after"]

    resp = await client.patch(
        "/admin/teams/payments",
        json={"daily_limit": 20, "name": "Payments", "callback_url": receiver.url},
        headers=OPS,
    )
    assert resp.status == 200
    latest = (await entries(client))[0]
    assert latest["action"] == "team.updated"
    assert latest["before"] == {"daily_limit": 10, "name": "payments", "callback_url": None}
    assert latest["after"] == {"daily_limit": 20, "name": "Payments", "callback_url": receiver.url}

    # the same values again change nothing, and so write nothing
    resp = await client.patch("/admin/teams/payments", json={"daily_limit": 20}, headers=OPS)
    assert resp.status == 200
    assert len(await entries(client)) == 2

    resp = await client.patch("/admin/teams/payments", json={"active": False}, headers=OPS)
    assert (await entries(client))[0]["action"] == "team.disabled"
    resp = await client.post("/admin/teams/payments/webhook-secret", headers=OPS)
    rotated = (await resp.json())["webhook_secret"]
    latest = (await entries(client))[0]
    assert latest["action"] == "team.webhook_secret_rotated"
    assert latest["before"] is None and latest["after"] is None  # that it happened, no more

    # a refused change (bad input, unknown team) writes nothing
    for call in (
        client.patch("/admin/teams/payments", json={"daily_limit": -1}, headers=OPS),
        client.patch("/admin/teams/nobody", json={"daily_limit": 1}, headers=OPS),
        client.post("/admin/teams/nobody/webhook-secret", headers=OPS),
        client.post("/admin/teams", json={"id": "payments"}, headers=OPS),
    ):
        assert (await call).status in (404, 409, 422)
    assert len(await entries(client)) == 4

    # nothing in the log holds a secret: no webhook secret ever shown, no token
    stored = json.dumps([list(map(str, r)) for r in audit_rows(database)])
    for secret in (created["webhook_secret"], rotated, OPS_TOKEN):
        assert secret not in stored
    assert (await verify_store(database)).ok


async def verify_store(database: str) -> Any:
    store = make_store(database)
    await store.open()
    try:
        return await verify(store)
    finally:
        await store.close()


async def test_a_webhook_retry_is_audited(
    make_client: ClientFactory, database: str, receiver: Receiver, provider: FakeProvider
) -> None:
    client = await make_client(webhook_retry_schedule=(0.0,))
    await client.post(
        "/admin/teams", json={"id": "payments", "callback_url": receiver.url}, headers=OPS
    )
    receiver.failures = 100
    provider.mode = "error"
    resp = await client.post(
        "/messages", json={"to": "0788000001", "text": "hi"}, headers=auth(mint("payments"))
    )
    assert resp.status in (200, 201, 207, 502), await resp.text()
    for _ in range(200):
        hooks = await (await client.get("/admin/webhooks?status=failed", headers=OPS)).json()
        if hooks["data"]:
            break
        await asyncio.sleep(0.05)
    [hook] = hooks["data"]
    resp = await client.post(f"/admin/webhooks/{hook['id']}/retry", headers=OPS)
    assert resp.status == 202
    [entry] = await entries(client, action="webhook.retried")
    assert entry["target"] == hook["id"] and entry["team"] == "payments"
    assert entry["before"]["status"] == "failed" and entry["after"]["status"] == "pending"
    assert entry["after"]["attempts"] == 0 and entry["actor"] == "ops-alice"
    assert (await client.post("/admin/webhooks/whk_nothing/retry", headers=OPS)).status == 404
    assert len(await entries(client, action="webhook.retried")) == 1


async def test_filters_and_keyset_pages(make_client: ClientFactory, database: str) -> None:
    client = await make_client()
    for team in ("a", "b", "c"):
        await client.post("/admin/teams", json={"id": team}, headers=OPS)
        await client.patch(
            f"/admin/teams/{team}", json={"daily_limit": 5}, headers=auth(mint("ops-bob", "admin"))
        )
    assert [e["target"] for e in await entries(client, team="b")] == ["b", "b"]
    assert {e["actor"] for e in await entries(client, actor="ops-bob")} == {"ops-bob"}
    assert len(await entries(client, action="team.created")) == 3
    everything = await entries(client)
    assert [e["id"] for e in everything] == [6, 5, 4, 3, 2, 1]  # newest first
    middle = everything[2]["at"]
    since = await entries(client, since=middle)
    assert all(e["at"] >= middle for e in since) and everything[2]["id"] in [e["id"] for e in since]
    assert all(e["at"] < middle for e in await entries(client, until=middle))
    seen, cursor = [], None
    while True:
        params = {"limit": "4", **({"cursor": cursor} if cursor else {})}
        page = await (await client.get("/admin/audit", params=params, headers=OPS)).json()
        seen += [e["id"] for e in page["data"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == [6, 5, 4, 3, 2, 1]
    for bad in ({"since": "yesterday"}, {"limit": "0"}, {"cursor": "x"}, {"colour": "red"}):
        await problem(
            await client.get("/admin/audit", params=bad, headers=OPS), 422, "invalid_parameter"
        )
    await problem(
        await client.get("/admin/audit", headers=auth(mint("payments"))), 403, "insufficient_scope"
    )


async def test_no_code_path_can_change_or_remove_an_entry(database: str) -> None:
    store = make_store(database)
    await store.open()
    try:
        await store_teams.create_team(store, "payments", {}, datetime.now(UTC))
        for sql in (
            "UPDATE audit_log SET actor = 'mallory'",
            "DELETE FROM audit_log",
            "DELETE FROM audit_head",
        ):
            with pytest.raises(Exception, match=r"append-only|kept"):
                await store.run(sql)
        assert (await verify(store)).ok
    finally:
        await store.close()


def cli(database: str, *args: str, ok: bool = True) -> subprocess.CompletedProcess[str]:
    env = serve_env(database, free_port())
    result = subprocess.run(
        [sys.executable, "-m", "gateway", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    if ok:
        assert result.returncode == 0, result.stderr
    return result


async def _tamper(database: str, sql: str) -> None:
    """What an attacker with the database's own access would do: the triggers out of the way."""
    if database.startswith("postgresql"):
        pg = await asyncpg.connect(database)
        try:
            await pg.execute("ALTER TABLE audit_log DISABLE TRIGGER audit_log_append_only")
            await pg.execute(sql)
            await pg.execute("ALTER TABLE audit_log ENABLE TRIGGER audit_log_append_only")
        finally:
            await pg.close()
        return
    with sqlite3.connect(database) as conn:
        conn.execute("DROP TRIGGER IF EXISTS audit_log_append_only_update")
        conn.execute("DROP TRIGGER IF EXISTS audit_log_append_only_delete")
        conn.execute(sql)


async def test_cli_changes_are_audited_and_verify_names_the_broken_entry(database: str) -> None:
    store = make_store(database)  # what `serve` does at its first start
    await store.open()
    await store.close()
    await asyncio.to_thread(cli, database, "team", "create", "payments", "--daily-limit", "5")
    await asyncio.to_thread(
        cli,
        database,
        "team",
        "update",
        "payments",
        "--daily-limit",
        "9",
        "--alert-thresholds",
        "50,90",
    )
    await asyncio.to_thread(cli, database, "team", "rotate-secret", "payments")
    await asyncio.to_thread(cli, database, "team", "disable", "payments")
    listed = json.loads(
        (await asyncio.to_thread(cli, database, "audit", "--team", "payments", "--json")).stdout
    )
    assert [e["action"] for e in listed] == [
        "team.disabled",
        "team.webhook_secret_rotated",
        "team.updated",
        "team.created",
    ]
    assert {e["actor"] for e in listed} == {f"cli:{getpass.getuser()}"}
    assert {e["source"] for e in listed} == {"cli"}
    assert listed[2]["after"] == {"daily_limit": 9, "alert_thresholds": [50, 90]}
    table = (await asyncio.to_thread(cli, database, "audit")).stdout
    assert "team.updated" in table and "daily_limit: 5 -> 9" in table
    ok = await asyncio.to_thread(cli, database, "audit", "verify")
    assert ok.stdout.startswith("audit log ok: 4 entries")

    await _tamper(database, "UPDATE audit_log SET after = '{\"daily_limit\":999}' WHERE seq = 2")
    broken = await asyncio.to_thread(cli, database, "audit", "verify", ok=False)
    assert broken.returncode == 1
    assert "broken at entry 2" in broken.stderr and "altered" in broken.stderr

    await _tamper(database, "DELETE FROM audit_log WHERE seq >= 2")  # and hide the evidence
    broken = await asyncio.to_thread(cli, database, "audit", "verify", ok=False)
    assert "broken at entry 2" in broken.stderr and "missing" in broken.stderr


async def test_changes_on_two_replicas_at_once_form_one_chain(
    database: str, provider: FakeProvider
) -> None:
    async with aiohttp.ClientSession() as http, two_replicas(database, provider) as (a, b, _):
        for team in ("t0", "t1", "t2", "t3"):
            async with http.post(f"{a}/admin/teams", json={"id": team}, headers=OPS) as resp:
                assert resp.status == 201

        async def change(i: int) -> int:
            base = (a, b)[i % 2]
            body = {"daily_limit": 1000 + i}
            async with http.patch(f"{base}/admin/teams/t{i % 4}", json=body, headers=OPS) as resp:
                return resp.status

        statuses = await asyncio.gather(*(change(i) for i in range(200)))
        assert set(statuses) == {200}
    rows = audit_rows(database)
    assert [r[0] for r in rows] == list(range(1, 205))  # 4 creations, 200 changes, no gap
    assert len({r[-1] for r in rows}) == 204
    verdict = await verify_store(database)
    assert verdict.ok and verdict.entries == 204


async def test_the_sandbox_team_is_audited_as_the_gateways_own(database: str) -> None:
    store = make_store(database)
    await store.open()
    try:
        await store_teams.create_team(
            store,
            "demo",
            {},
            datetime.now(UTC),
            actor=Actor("gateway", "gateway"),
        )
        [row] = audit_rows(database)
        assert row[2:4] == ("gateway", "gateway")
    finally:
        await store.close()


async def test_a_running_gateway_and_the_cli_share_one_chain(
    database: str, provider: FakeProvider
) -> None:
    port = free_port()
    async with gateway_process(serve_env(database, port, provider.url), port):
        async with aiohttp.ClientSession() as http:
            url = f"http://127.0.0.1:{port}/admin/teams"
            async with http.post(url, json={"id": "payments"}, headers=OPS) as resp:
                assert resp.status == 201
            await asyncio.to_thread(
                cli, database, "team", "update", "payments", "--daily-limit", "3"
            )
            async with http.get(f"http://127.0.0.1:{port}/admin/audit", headers=OPS) as resp:
                data = (await resp.json())["data"]
    assert [(e["source"], e["action"]) for e in data] == [
        ("cli", "team.updated"),
        ("api", "team.created"),
    ]
    assert (await asyncio.to_thread(cli, database, "audit", "verify")).returncode == 0
