"""GATEWAY_RETENTION_DAYS: old messages, deliveries and reports go, in chunks; billing stays."""

from __future__ import annotations

import asyncio
import sqlite3
from datetime import UTC, datetime, timedelta
from pathlib import Path

from gateway.platform.clock import iso
from gateway.platform.ids import lowest_ulid
from gateway.platform.settings import Settings
from gateway.store import teams as store_teams
from gateway.store.retention import delete_older_than
from gateway.store.sqlite import SqliteStore

from .conftest import ClientFactory, FakeProvider, FixedClock, Receiver, auth, create_team, mint

ADMIN = auth(mint("root", "admin"))


def count(database: str, table: str) -> int:
    with sqlite3.connect(database) as conn:
        return int(conn.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0])


async def test_old_rows_go_and_billing_stays(
    make_client: ClientFactory, provider: FakeProvider, receiver: Receiver, settings: Settings
) -> None:
    # Message ids are monotonic ULIDs of the send time, so "old" is made by looking from the
    # future: the second gateway's clock runs 40 days ahead.
    then = datetime.now(UTC)
    old = await make_client()
    await create_team(old, "payments", callback_url=receiver.url)
    provider.dlr = "after"
    for n in range(5):
        resp = await old.post(
            "/messages",
            json={"to": [f"078800{n}001", f"078800{n}013"], "text": "old"},
            headers=auth(mint("payments")),
        )
        assert resp.status == 201
    await provider.settle_reports()
    await receiver.wait_for(10)  # 5 failed + 5 delivered webhooks, delivered
    month = iso(then)[:7]
    billed = await (await old.get(f"/admin/usage?month={month}", headers=ADMIN)).json()
    await old.close()
    assert count(settings.database, "messages") == 10
    # Today's gateway keeps 30 days: the housekeeping at start removes the old rows.
    new = await make_client(clock=FixedClock(then + timedelta(days=40)), retention_days=30)
    resp = await new.post(
        "/messages", json={"to": "0788999001", "text": "new"}, headers=auth(mint("payments"))
    )
    assert resp.status == 201
    async with asyncio.timeout(10):
        while count(settings.database, "messages") != 1:
            await asyncio.sleep(0.05)
    assert count(settings.database, "dlr_reports") == 0
    assert count(settings.database, "webhooks") <= 1  # only the new message's, if any
    again = await (await new.get(f"/admin/usage?month={month}", headers=ADMIN)).json()
    assert again == billed and again["totals"]["messages"] == 5  # the refused ones cost nothing


async def test_deletion_goes_a_chunk_at_a_time_and_keeps_pending_deliveries(
    tmp_path: Path,
) -> None:
    store = SqliteStore(str(tmp_path / "gateway.db"))
    await store.open()
    try:
        then = datetime.now(UTC) - timedelta(days=10)
        await store.run(
            "INSERT INTO teams (id, name, webhook_secret, created_at) VALUES ('t', 't', 's', ?)",
            (iso(then),),
        )
        for n in range(95):
            mid = f"msg_{lowest_ulid(then + timedelta(seconds=n))[:-3]}{n:03d}"
            await store.run(
                "INSERT INTO messages (id, batch_id, team_id, recipient, text, status, segments,"
                " encoding, charged_segments, cost, day, month, created_at, events)"
                " VALUES (?, 'b', 't', '250788000001', 'x', 'delivered', 1, 'gsm7', 1, 75,"
                " '2026-01-01', '2026-01', ?, '[]')",
                (mid, iso(then)),
            )
            if n == 0:
                await store.run(
                    "INSERT INTO webhooks (id, message_id, team_id, type, url, payload, status,"
                    " created_at) VALUES ('whk_1', ?, 't', 'message.delivered', 'http://x',"
                    " '{}', 'pending', ?)",
                    (mid, iso(then)),
                )
        for n, status in enumerate(("delivered", "failed", "pending")):  # usage alerts' webhooks
            await store.run(
                "INSERT INTO webhooks (id, message_id, team_id, type, url, payload, status,"
                " created_at) VALUES (?, NULL, 't', 'usage.limit_reached', 'http://x', '{}', ?,"
                " ?)",
                (f"whk_{lowest_ulid(then)[:-1]}{n}", status, iso(then)),
            )
        await store.run(
            "INSERT INTO usage_alerts (team_id, period, limit_kind, type, threshold, limit_value,"
            " used, at) VALUES ('t', '2026-01', 'monthly', 'usage.limit_reached', 100, 1, 1, ?)",
            (iso(then),),
        )
        await store_teams.update_team(store, "t", {"daily_limit": 3})  # an audit entry
        cutoff = datetime.now(UTC) - timedelta(days=5)
        deleted = await delete_older_than(
            store, "msg_" + lowest_ulid(cutoff), iso(cutoff), chunk=10
        )
        assert deleted == {"webhooks": 0, "alert_webhooks": 2, "messages": 94, "dlr_reports": 0}
        left = await store.fetchall("SELECT id FROM messages")
        assert len(left) == 1  # the one whose webhook is still pending
        assert len(await store.fetchall("SELECT id FROM webhooks WHERE message_id IS NULL")) == 1
        # the audit log and the alerts themselves are kept, whatever their age
        assert len(await store.fetchall("SELECT seq FROM audit_log")) == 1
        assert len(await store.fetchall("SELECT team_id FROM usage_alerts")) == 1
    finally:
        await store.close()


async def test_messages_still_waiting_in_the_queue_are_kept(tmp_path: Path) -> None:
    database = str(tmp_path / "gateway.db")
    store = SqliteStore(database)
    await store.open()
    old = datetime.now(UTC) - timedelta(days=40)
    with sqlite3.connect(database) as conn:
        conn.execute(
            "INSERT INTO teams (id, name, webhook_secret, created_at) VALUES ('t', 't', 'x', ?)",
            (iso(old),),
        )
        for n, status in enumerate(("queued", "scheduled", "sent", "expired")):
            conn.execute(
                "INSERT INTO messages (id, batch_id, team_id, recipient, text, status, segments,"
                " encoding, charged_segments, cost, day, month, created_at, events)"
                " VALUES (?, 'b', 't', '250788000001', 'x', ?, 1, 'gsm7', 1, 75, 'd', 'm', ?,"
                " '[]')",
                (f"msg_{lowest_ulid(old)[:-1]}{n}", status, iso(old)),
            )
    cutoff = datetime.now(UTC) - timedelta(days=30)
    deleted = await delete_older_than(store, "msg_" + lowest_ulid(cutoff), iso(cutoff))
    await store.close()
    assert deleted["messages"] == 2
    with sqlite3.connect(database) as conn:
        kept = sorted(r[0] for r in conn.execute("SELECT status FROM messages"))
    assert kept == ["queued", "scheduled"]
