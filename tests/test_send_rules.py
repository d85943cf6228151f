"""SPEC 9: granted sender IDs, the suppression list and metadata, through the HTTP API on both
databases, with the provider and the team's receiver played by real servers."""

from __future__ import annotations

import asyncio
import io
import json
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import jwt
import pytest
from aiohttp.test_utils import TestClient
from standardwebhooks.webhooks import Webhook

from gateway.store import make_store
from gateway.store import teams as store_teams

from .conftest import (
    ClientFactory,
    FakeProvider,
    Receiver,
    at_schema,
    auth,
    create_team,
    ledger_mismatches,
    mint,
    problem,
    query,
    query_write,
)
from .test_audit import cli

pytestmark = pytest.mark.both_databases
ADMIN_SCOPE = "admin"


def admin() -> dict[str, str]:
    return auth(mint("root", ADMIN_SCOPE))


def team(sub: str = "payments") -> dict[str, str]:
    return auth(mint(sub))


async def send(client: TestClient[Any, Any], body: dict[str, Any], sub: str = "payments") -> Any:
    return await client.post("/messages", json=body, headers=team(sub))


# --- sender IDs ---------------------------------------------------------------------------


async def test_a_send_under_an_ungranted_sender_is_refused_and_nothing_is_sent(
    make_client: ClientFactory, provider: FakeProvider, database: str
) -> None:
    client = await make_client()
    await create_team(client, "payments", senders=["PAYCO", "PAYCO OTP"])
    await create_team(client, "alerts", senders=["ALERTS"])
    resp = await send(client, {"to": "0788000001", "text": "hi", "sender": "ALERTS"})
    body = await problem(resp, 422, "sender_not_allowed")
    assert body["errors"] == [{"field": "sender", "reason": "is not granted to this team"}]
    assert provider.calls == []
    assert query(database, "SELECT COUNT(*) FROM messages") == [(0,)]
    # the granted ones go, carried to the provider's `sender` field; none named: the first
    resp = await send(client, {"to": "0788000001", "text": "hi", "sender": "PAYCO OTP"})
    assert resp.status == 201, await resp.text()
    resp = await send(client, {"to": "0788000002", "text": "hi"})
    assert resp.status == 201
    assert (await resp.json())["messages"][0]["sender"] == "PAYCO"
    assert [c["sender"] for c in provider.calls] == ["PAYCO OTP", "PAYCO"]
    # a queued send is refused the same way, before anything is stored
    resp = await send(client, {"to": "0788000003", "text": "hi", "sender": "X", "queue": True})
    await problem(resp, 422, "sender_not_allowed")
    assert query(database, "SELECT COUNT(*) FROM messages") == [(2,)]


async def test_a_team_with_no_grant_sends_only_as_the_gateway(
    make_client: ClientFactory, provider: FakeProvider
) -> None:
    client = await make_client(provider_sender="ACME")
    await create_team(client, "payments")
    await problem(
        await send(client, {"to": "0788000001", "text": "hi", "sender": "BANK"}),
        422,
        "sender_not_allowed",
    )
    assert (await send(client, {"to": "0788000001", "text": "hi"})).status == 201
    assert (await send(client, {"to": "0788000002", "text": "hi", "sender": "ACME"})).status == 201
    assert [c["sender"] for c in provider.calls] == ["ACME", "ACME"]


async def test_the_drop_in_endpoint_refuses_an_ungranted_sender_in_the_providers_shape(
    make_client: ClientFactory, provider: FakeProvider
) -> None:
    client = await make_client()
    await create_team(client, "payments", senders=["PAYCO"])
    form = {"api_key": mint("payments"), "recipients": "0788000001", "message": "hi"}
    resp = await client.post("/api/v2/sms/send", data={**form, "sender": "OTHER"})
    assert resp.status == 400
    assert await resp.json() == {
        "status": "error",
        "message": "sender: 'OTHER' is not granted to this team (it may send as PAYCO)",
        "code": "sender_not_allowed",
    }
    assert provider.calls == []
    resp = await client.post("/api/v2/sms/send", data={**form, "sender": "PAYCO"})
    assert (await resp.json())["status"] == "success"
    assert provider.calls[0]["sender"] == "PAYCO"


async def test_senders_are_set_through_the_admin_api_checked_and_audited(
    make_client: ClientFactory, database: str
) -> None:
    client = await make_client()
    await create_team(client, "payments")
    resp = await client.patch(
        "/admin/teams/payments", json={"senders": ["OK", "much too long a sender"]}, headers=admin()
    )
    await problem(resp, 422, "validation_error")
    resp = await client.patch(
        "/admin/teams/payments", json={"senders": ["PAYCO", "2507880"]}, headers=admin()
    )
    assert resp.status == 200 and (await resp.json())["senders"] == ["PAYCO", "2507880"]
    assert (
        await send(client, {"to": "0788000001", "text": "x", "sender": "2507880"})
    ).status == 201
    rows = query(database, "SELECT action, after FROM audit_log WHERE action = 'team.updated'")
    assert [(a, json.loads(after)) for a, after in rows] == [
        ("team.updated", {"senders": ["PAYCO", "2507880"]})
    ]


async def test_the_upgrade_grants_each_team_the_senders_it_used(
    make_client: ClientFactory, provider: FakeProvider, database: str
) -> None:
    await at_schema(database, 15)
    query_write(
        database,
        "INSERT INTO teams (id, name, webhook_secret, created_at) VALUES"
        " ('payments', 'P', 'whsec_x', '2026-12-01T00:00:00.000Z'),"
        " ('quiet', 'Q', 'whsec_y', '2026-12-01T00:00:00.000Z')",
    )
    for n, sender in enumerate(["RARE", "PAYCO", "PAYCO", None]):
        query_write(
            database,
            "INSERT INTO messages (id, batch_id, team_id, recipient, text, sender, status,"
            " segments, encoding, charged_segments, cost, day, month, created_at, events)"
            f" VALUES ('msg_{n}', 'bat_{n}', 'payments', '250788000001', 'x',"
            f" {'NULL' if sender is None else repr(sender)}, 'delivered', 1, 'gsm7', 1, 75,"
            " '2026-12-01', '2026-12', '2026-12-01T00:00:00.000Z', '[]')",
        )
    store = make_store(database)
    await store.open()
    try:
        assert (await store_teams.get_team(store, "payments")).senders == ("PAYCO", "RARE")
        assert (await store_teams.get_team(store, "quiet")).senders == ()
    finally:
        await store.close()
    client = await make_client()  # the gateway on the upgraded database
    resp = await send(client, {"to": "0788000001", "text": "x", "sender": "RARE"})
    assert resp.status == 201, await resp.text()
    resp = await send(client, {"to": "0788000001", "text": "x"})
    assert (await resp.json())["messages"][0]["sender"] == "PAYCO"
    assert [c["sender"] for c in provider.calls] == ["RARE", "PAYCO"]


# --- the suppression list -----------------------------------------------------------------


async def test_a_batch_of_ten_with_three_suppressed_sends_seven_and_charges_seven(
    make_client: ClientFactory, provider: FakeProvider, receiver: Receiver, database: str
) -> None:
    client = await make_client()
    made = await create_team(client, "payments", callback_url=receiver.url)
    numbers = [f"07880000{n:02d}" for n in range(10)]
    for number in numbers[:2]:  # two on the team's own list, one on the global list
        resp = await client.put(
            f"/suppressions/{number}", json={"reason": "asked to stop"}, headers=team()
        )
        assert resp.status == 201, await resp.text()
    resp = await client.put(f"/admin/suppressions/{numbers[2]}", headers=admin())
    assert resp.status == 201
    provider.dlr = "after"  # the seven sent are reported delivered
    resp = await send(client, {"to": numbers, "text": "Sale!", "metadata": {"campaign": "dec"}})
    assert resp.status == 201, await resp.text()
    body = await resp.json()
    by_to = {m["to"]: m for m in body["messages"]}
    suppressed = [by_to["2507880000" + f"{n:02d}"] for n in range(3)]
    assert [(m["status"], m["error"]["code"], m["cost"]) for m in suppressed] == [
        ("failed", "suppressed", 0)
    ] * 3
    assert "global suppression list" in suppressed[2]["error"]["detail"]
    assert body["total_cost"] == 7 * 75
    assert len(provider.calls) == 1
    sent_to = provider.calls[0]["recipients"].split(",")
    assert sorted(sent_to) == sorted("2507880000" + f"{n:02d}" for n in range(3, 10))
    usage = await (await client.get("/usage", headers=team())).json()
    assert usage["day"]["used"] == 7 and usage["month"]["cost"] == 7 * 75
    assert ledger_mismatches(database) == []
    # a webhook for each of the ten, the suppressed ones `message.failed`, all signed
    await provider.settle_reports()
    await receiver.wait_for(10)
    verifier = Webhook(made["webhook_secret"])
    hooks = [verifier.verify(body, headers) for headers, body in receiver.received]
    failed = sorted(h["data"]["to"] for h in hooks if h["type"] == "message.failed")
    assert failed == sorted(m["to"] for m in suppressed)
    delivered = sorted(h["data"]["to"] for h in hooks if h["type"] == "message.delivered")
    assert delivered == sorted(sent_to) and len(hooks) == 10
    assert all(h["data"]["metadata"] == {"campaign": "dec"} for h in hooks)


async def test_an_otp_passes_the_teams_own_list_but_not_the_global_one(
    make_client: ClientFactory, provider: FakeProvider
) -> None:
    client = await make_client()
    await create_team(client, "payments")
    assert (await client.put("/suppressions/0788000001", headers=team())).status == 201
    assert (await client.put("/admin/suppressions/0788000002", headers=admin())).status == 201
    resp = await send(client, {"to": "0788000001", "text": "Your code is 1234", "purpose": "otp"})
    assert (await resp.json())["messages"][0]["status"] == "sent"
    resp = await send(client, {"to": "0788000002", "text": "Your code is 1234", "purpose": "otp"})
    message = (await resp.json())["messages"][0]
    assert resp.status == 201 and message["status"] == "failed"
    assert message["error"]["code"] == "suppressed"
    resp = await send(client, {"to": "0788000001", "text": "Not a code"})
    assert (await resp.json())["messages"][0]["error"]["code"] == "suppressed"
    assert [c["recipients"] for c in provider.calls] == ["250788000001"]
    await problem(
        await send(client, {"to": "0788000001", "text": "x", "purpose": "marketing"}),
        422,
        "invalid_purpose",
    )


async def test_a_queued_send_is_checked_when_it_is_dispatched(
    make_client: ClientFactory, provider: FakeProvider, database: str
) -> None:
    client = await make_client()
    await create_team(client, "payments")
    at = (datetime.now(UTC) + timedelta(seconds=2)).isoformat()
    resp = await send(client, {"to": ["0788000001", "0788000002"], "text": "later", "send_at": at})
    assert resp.status == 202, await resp.text()
    # suppressed while it waits: looked up when it is sent
    assert (await client.put("/suppressions/0788000002", headers=team())).status == 201
    async with asyncio.timeout(15):
        while query(
            database, "SELECT COUNT(*) FROM messages WHERE status IN ('scheduled', 'sending')"
        ) != [(0,)]:
            await asyncio.sleep(0.05)
    rows = query(database, "SELECT recipient, status, error_code, cost FROM messages ORDER BY 1")
    assert rows == [
        ("250788000001", "sent", None, 75),
        ("250788000002", "failed", "suppressed", 0),
    ]
    assert [c["recipients"] for c in provider.calls] == ["250788000001"]
    assert ledger_mismatches(database) == []


async def test_suppressions_are_listed_in_keyset_pages_and_removed(
    make_client: ClientFactory, database: str
) -> None:
    client = await make_client()
    await create_team(client, "payments")
    await create_team(client, "alerts")
    for n in range(5):
        assert (await client.put(f"/suppressions/078800000{n}", headers=team())).status == 201
    assert (await client.put("/suppressions/0788000009", headers=team("alerts"))).status == 201
    # the same number again: 200, and the same list; a new reason changes it
    resp = await client.put("/suppressions/+250788000000", headers=team())
    assert resp.status == 200
    seen: list[str] = []
    cursor = None
    while True:
        url = "/suppressions?limit=2" + (f"&cursor={cursor}" if cursor else "")
        page = await (await client.get(url, headers=team())).json()
        seen += [e["number"] for e in page["data"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == [f"25078800000{n}" for n in range(5)]  # only the team's own
    everything = await (await client.get("/admin/suppressions", headers=admin())).json()
    assert [(e["team"], e["number"]) for e in everything["data"]] == [
        ("alerts", "250788000009"),
        *[("payments", f"25078800000{n}") for n in range(5)],
    ]
    assert (await client.delete("/suppressions/0788000000", headers=team())).status == 204
    await problem(
        await client.delete("/suppressions/0788000000", headers=team()), 404, "not_suppressed"
    )
    await problem(await client.put("/suppressions/12", headers=team()), 422, "invalid_number")
    await problem(
        await client.get("/suppressions?cursor=nonsense!", headers=team()), 422, "invalid_parameter"
    )
    actions = [a for (a,) in query(database, "SELECT action FROM audit_log ORDER BY seq")]
    assert actions.count("suppression.added") == 6 and actions.count("suppression.removed") == 1
    await problem(
        await client.put("/admin/suppressions/0788000001?team=nobody", headers=admin()),
        404,
        "team_not_found",
    )


async def test_a_csv_import_of_100000_numbers_is_all_or_nothing(
    make_client: ClientFactory, database: str
) -> None:
    client = await make_client()
    await create_team(client, "payments")
    lines = ["number"] + [f"0788{n:06d}" for n in range(100_000)]
    bad = [*lines[:5], "not a number", *lines[5:10], "12"]
    resp = await client.post(
        "/admin/suppressions/import",
        data=io.BytesIO("\n".join(bad).encode()),
        headers={**admin(), "Content-Type": "text/csv"},
    )
    body = await problem(resp, 422, "invalid_lines")
    assert [e["line"] for e in body["errors"]] == [6, 12] and body["invalid"] == 2
    assert query(database, "SELECT COUNT(*) FROM suppressions") == [(0,)]
    started = time.monotonic()
    resp = await client.post(
        "/admin/suppressions/import?reason=opt-out+list",
        data=io.BytesIO("\n".join(lines).encode()),
        headers={**admin(), "Content-Type": "text/csv"},
    )
    took = time.monotonic() - started
    assert resp.status == 200, await resp.text()
    assert await resp.json() == {
        "team": None,
        "scope": "global",
        "lines": 100_000,
        "numbers": 100_000,
        "added": 100_000,
        "already_suppressed": 0,
    }
    kind = "postgresql" if database.startswith("postgresql") else "sqlite"
    print(f"import of 100,000 numbers on {kind}: {took:.2f} s")
    assert query(database, "SELECT COUNT(*) FROM suppressions WHERE team_id = '*'") == [(100_000,)]
    # the same file again adds nothing; one audit entry for the import
    resp = await client.post(
        "/admin/suppressions/import",
        data=io.BytesIO("\n".join(lines[:1001]).encode()),
        headers={**admin(), "Content-Type": "text/csv"},
    )
    assert (await resp.json())["already_suppressed"] == 1000
    assert query(
        database, "SELECT COUNT(*) FROM audit_log WHERE action = 'suppression.imported'"
    ) == [(1,)]
    resp = await send(client, {"to": ["0788099999", "0788100000"], "text": "x"})
    statuses = sorted(m["status"] for m in (await resp.json())["messages"])
    assert statuses == ["failed", "sent"]


# --- metadata -----------------------------------------------------------------------------


async def test_metadata_round_trips_into_the_signed_webhook_byte_for_byte(
    make_client: ClientFactory, provider: FakeProvider, receiver: Receiver
) -> None:
    client = await make_client()
    made = await create_team(client, "payments", callback_url=receiver.url)
    metadata = {"order": "A-1001", "customer": "Ünïcode ✓", "empty": ""}
    provider.dlr = "after"
    resp = await send(client, {"to": "0788000001", "text": "x", "metadata": metadata})
    assert resp.status == 201
    message = (await resp.json())["messages"][0]
    assert message["metadata"] == metadata
    got = await (await client.get(f"/messages/{message['id']}", headers=team())).json()
    assert got["metadata"] == metadata
    await provider.settle_reports()
    await receiver.wait_for(1)
    headers, raw = receiver.received[0]
    payload = Webhook(made["webhook_secret"]).verify(raw, headers)
    assert payload["type"] == "message.delivered"
    expected = json.dumps(metadata, ensure_ascii=False, separators=(",", ":")).encode()
    assert expected in raw  # as sent, byte for byte


async def test_every_metadata_violation_is_listed_in_one_422(
    make_client: ClientFactory, provider: FakeProvider, database: str
) -> None:
    client = await make_client()
    await create_team(client, "payments")
    metadata: dict[str, Any] = {f"k{n}": "v" for n in range(17)}
    metadata["k0"] = 5
    metadata["x" * 41] = "v"
    metadata["k1"] = "v" * 501
    resp = await send(client, {"to": "0788000001", "text": "x", "metadata": metadata})
    body = await problem(resp, 422, "invalid_metadata")
    fields = [(e["field"], e["reason"]) for e in body["errors"]]
    assert ("metadata", "at most 16 keys") in fields
    assert ("metadata.k0", "must be a string") in fields
    assert ("metadata." + "x" * 41, "keys are 1 to 40 characters") in fields
    assert ("metadata.k1", "must be at most 500 characters") in fields
    big = {f"k{n}": "v" * 400 for n in range(12)}
    await problem(
        await send(client, {"to": "0788000001", "text": "x", "metadata": big}),
        422,
        "invalid_metadata",
    )
    await problem(
        await send(client, {"to": "0788000001", "text": "x", "metadata": ["a"]}),
        422,
        "validation_error",
    )
    assert provider.calls == [] and query(database, "SELECT COUNT(*) FROM messages") == [(0,)]


# --- the CLI ------------------------------------------------------------------------------


async def test_the_cli_grants_senders_and_keeps_the_suppression_list(
    database: str, tmp_path: Any
) -> None:
    store = make_store(database)  # what `serve` does at its first start
    await store.open()
    await store.close()
    await asyncio.to_thread(
        cli, database, "team", "create", "payments", "--senders", "PAYCO,PAY OTP"
    )
    listed = (await asyncio.to_thread(cli, database, "team", "list")).stdout
    assert "PAYCO,PAY OTP" in listed
    bad = await asyncio.to_thread(
        cli, database, "team", "update", "payments", "--senders", "WAYTOOLONGSENDER", ok=False
    )
    assert bad.returncode == 2 and "not a list of distinct sender IDs" in bad.stderr
    added = await asyncio.to_thread(
        cli,
        database,
        "suppression",
        "add",
        "0788 000 001",
        "--team",
        "payments",
        "--reason",
        "stop",
    )
    assert json.loads(added.stdout)["number"] == "250788000001"
    csv_file = tmp_path / "numbers.csv"
    csv_file.write_text("number\n0788000002\n+250788000003\n0788000002\n")
    imported = await asyncio.to_thread(cli, database, "suppression", "import", str(csv_file))
    assert imported.stdout.strip() == "2 added, 0 already suppressed (3 lines)"
    csv_file.write_text("0788000004\nnope\n")
    refused = await asyncio.to_thread(
        cli, database, "suppression", "import", str(csv_file), ok=False
    )
    assert refused.returncode == 2 and "line 2: 'nope'" in refused.stderr
    entries = json.loads(
        (await asyncio.to_thread(cli, database, "suppression", "list", "--json")).stdout
    )
    assert [(e["team"], e["number"]) for e in entries] == [
        (None, "250788000002"),
        (None, "250788000003"),
        ("payments", "250788000001"),
    ]
    await asyncio.to_thread(cli, database, "suppression", "remove", "0788000002")
    gone = await asyncio.to_thread(cli, database, "suppression", "remove", "0788000002", ok=False)
    assert gone.returncode == 2 and "not on the global list" in gone.stderr
    actions = [a for (a,) in query(database, "SELECT action FROM audit_log ORDER BY seq")]
    assert actions == [
        "team.created",
        "suppression.added",
        "suppression.imported",
        "suppression.removed",
    ]
    assert query(database, "SELECT DISTINCT source FROM audit_log") == [("cli",)]
    # a test token for the team's CI, issued as for any scope
    issued = await asyncio.to_thread(
        cli, database, "token", "issue", "--team", "payments", "--scope", "messages:test"
    )
    claims = jwt.decode(issued.stdout.strip(), options={"verify_signature": False})
    assert claims["sub"] == "payments" and claims["scope"] == "messages:test"


async def test_odd_suppression_input_is_a_clear_error_never_a_500(
    make_client: ClientFactory,
) -> None:
    client = await make_client()
    await create_team(client, "payments")
    cases: list[tuple[str, str, dict[str, Any], int]] = [
        ("get", "/suppressions?limit=²", {}, 422),
        ("get", "/suppressions?limit=0", {}, 422),
        ("get", "/suppressions?colour=red", {}, 422),
        ("get", "/admin/suppressions?cursor=" + "KiAyNTA3ODjCsg", {}, 422),
        ("put", "/suppressions/0788000001", {"json": {"reason": 5}}, 422),
        ("put", "/suppressions/0788000001", {"json": {"why": "x"}}, 422),
        ("put", "/suppressions/0788000001", {"data": b"not json"}, 400),
        ("put", "/suppressions/%C2%B2%C2%B2", {}, 422),
        ("post", "/admin/suppressions/import", {"json": {"numbers": []}}, 415),
        ("post", "/admin/suppressions/import?team=Bad!", {"data": b"x"}, 404),
    ]
    for method, url, kwargs, status in cases:
        headers = admin() if "/admin/" in url else team()
        resp = await getattr(client, method)(url, headers=headers, **kwargs)
        assert resp.status == status, (url, await resp.text())
        assert resp.headers["Content-Type"].startswith("application/problem+json")
    resp = await client.post(
        "/admin/suppressions/import",
        data=io.BytesIO(b"\xff\xfe not utf-8"),
        headers={**admin(), "Content-Type": "text/csv"},
    )
    assert resp.status == 422
