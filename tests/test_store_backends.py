"""The store's own behaviour on both databases: the same functions, the same answers.

Where it matters (PostgreSQL), two stores on one database stand for two replicas: each has its
own connections, so their transactions really run at the same time."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections.abc import AsyncIterator

import pytest

from gateway.delivery import reports
from gateway.sending import settlement
from gateway.store import Store, make_store, outbox, teams
from gateway.store import messages as store_messages
from gateway.store import settle as store_settle
from gateway.store.db import Tx
from gateway.store.errors import DatabaseUnreachable, Duplicate, NotFound, SchemaTooNew
from gateway.teams import quota

from .conftest import ledger_mismatches, plain_batch, query

pytestmark = pytest.mark.both_databases

AT = "2026-11-26T09:00:00.000Z"


@contextlib.asynccontextmanager
async def opened(database: str) -> AsyncIterator[Store]:
    store = make_store(database)
    await store.open()
    try:
        yield store
    finally:
        await store.close()


@pytest.fixture
async def store(database: str) -> AsyncIterator[Store]:
    async with opened(database) as s:
        await s.run(
            "INSERT INTO teams (id, name, webhook_secret, created_at, daily_limit)"
            " VALUES ('payments', 'Payments', 'whsec_x', ?, 40)",
            (AT,),
        )
        yield s


async def put(tx: Tx, key: str, fail: bool) -> str:
    await tx.execute("INSERT INTO meta (key, value) VALUES (?, 'v')", (key,))
    if fail:
        raise ValueError(f"refused {key}")
    return key


async def test_a_failing_write_changes_nothing_and_the_others_go_in(store: Store) -> None:
    results = await asyncio.gather(
        *(store.write(put, f"k{n}", n % 3 == 0) for n in range(30)), return_exceptions=True
    )
    assert [isinstance(r, ValueError) for r in results] == [n % 3 == 0 for n in range(30)]
    rows = await store.fetchall("SELECT key FROM meta WHERE key LIKE 'k%' ORDER BY key")
    assert sorted(r["key"] for r in rows) == sorted(f"k{n}" for n in range(30) if n % 3)


async def test_stores_opened_together_on_a_new_database_migrate_it_once(database: str) -> None:
    async with contextlib.AsyncExitStack() as stack:
        stores = await asyncio.gather(
            *(stack.enter_async_context(opened(database)) for _ in range(4))
        )
        keys = await asyncio.gather(*(s.secret("shared_key") for s in stores))
        assert len(set(keys)) == 1  # one key for every process


async def test_a_database_newer_than_the_code_is_refused_and_left_alone(database: str) -> None:
    async with opened(database):
        pass
    if database.startswith("postgresql"):
        bump, version = (
            "UPDATE schema_version SET version = 99",
            "SELECT version FROM schema_version",
        )
    else:
        bump, version = "PRAGMA user_version = 99", "PRAGMA user_version"
    query(database, bump)
    with pytest.raises(SchemaTooNew, match="newer than this gateway"):
        async with opened(database):
            pass
    assert query(database, version) == [(99,)]


async def test_teams_raise_the_stores_own_errors(store: Store) -> None:
    from datetime import UTC, datetime

    with pytest.raises(Duplicate):
        await teams.create_team(store, "payments", {}, datetime.now(UTC))
    with pytest.raises(NotFound):
        await teams.update_team(store, "nobody", {"active": False})
    with pytest.raises(NotFound):
        await teams.rotate_webhook_secret(store, "nobody")
    updated = await teams.update_team(store, "payments", {"rate_limit_per_second": 2})
    assert updated.rate_limit_per_second == 2.0


async def test_reservations_through_two_stores_never_pass_the_limit(
    store: Store, database: str
) -> None:
    async with opened(database) as other:
        batches = [
            plain_batch(
                f"bat_{n:04d}",
                AT,
                [store_messages.NewMessage(f"msg_{n:04d}", "250788000001", 1, 75)],
            )
            for n in range(120)
        ]
        results = await asyncio.gather(
            *(
                store_messages.reserve((store, other)[n % 2], "prc_test", batch)
                for n, batch in enumerate(batches)
            )
        )
    refused = [r for r in results if isinstance(r, quota.Refusal)]
    assert len(refused) == 80 and results.count(None) == 40
    assert query(database, "SELECT segments FROM usage WHERE period = '2026-11-26'") == [(40,)]
    assert query(database, "SELECT COUNT(*) FROM messages") == [(40,)]


async def test_sends_reserved_together_are_each_decided_on_their_own(
    store: Store, database: str
) -> None:
    """Sends that reach the store at the same moment share one transaction (on PostgreSQL one
    call of gateway_reserve_group): one over its daily limit, over its budget, of a disabled
    team or holding a key already taken changes nothing, and the others go in."""
    for team, active, budget in (("ops", 1, 150), ("off", 0, None), ("hr", 1, None)):
        await store.run(
            "INSERT INTO teams (id, name, webhook_secret, created_at, active, monthly_budget)"
            " VALUES (?, ?, 'whsec_y', ?, ?, ?)",
            (team, team.title(), AT, active, budget),
        )

    def send(team: str, n: int, segments: int) -> store_messages.Batch:
        message = store_messages.NewMessage(f"msg_{team}_{n}", "250788000001", segments, 75)
        return dataclasses.replace(plain_batch(f"bat_{team}_{n}", AT, [message]), team_id=team)

    def key(name: str) -> store_messages.IdempotencyClaim:
        return store_messages.IdempotencyClaim(name, "hash", 86400)

    sends = [
        *((send("payments", n, 10), None) for n in range(5)),  # daily limit 40: 4 fit
        *((send("ops", n, 1), None) for n in range(3)),  # budget 150 RWF: 2 fit
        (send("off", 0, 1), None),  # disabled
        (send("hr", 0, 1), key("k1")),
        (send("hr", 1, 1), key("k1")),  # the same key: in flight already
        (send("hr", 2, 1), key("k2")),
    ]
    results = await asyncio.gather(
        *(store_messages.reserve(store, "prc_test", b, c) for b, c in sends),
        return_exceptions=True,
    )
    refusals = [r.quota for r in results if isinstance(r, quota.Refusal)]
    assert sorted(refusals) == ["daily_limit", "monthly_budget"]
    assert sum(isinstance(r, store_messages.TeamInactive) for r in results) == 1
    assert sum(isinstance(r, store_messages.PriorAnswer) and r.in_flight for r in results) == 1
    assert results.count(None) == 4 + 2 + 2
    usage = "SELECT team_id, period, messages, segments, cost FROM usage WHERE messages > 0"
    assert sorted(query(database, usage + " ORDER BY 1, 2")) == [
        ("hr", "2026-11", 2, 2, 150),
        ("hr", "2026-11-26", 2, 2, 150),
        ("ops", "2026-11", 2, 2, 150),
        ("ops", "2026-11-26", 2, 2, 150),
        ("payments", "2026-11", 4, 40, 300),  # the refused send's month charge was put back
        ("payments", "2026-11-26", 4, 40, 300),
    ]
    assert query(database, "SELECT team_id, key FROM idempotency ORDER BY 2") == [
        ("hr", "k1"),
        ("hr", "k2"),
    ]
    assert query(database, "SELECT team_id, COUNT(*) FROM messages GROUP BY 1 ORDER BY 1") == [
        ("hr", 2),
        ("ops", 2),
        ("payments", 4),
    ]
    if store.kind == "postgresql":  # they really went in together: one transaction
        assert query(database, "SELECT COUNT(DISTINCT xmin::text) FROM messages") == [(1,)]


async def test_batches_settled_together_are_each_settled_on_their_own(
    store: Store, database: str
) -> None:
    """Batches that went out settle together (on PostgreSQL one call of
    gateway_settle_sent_group): one with a delivery report already waiting is settled the
    general way (its report applied), one charged more than reserved moves the counters by the
    difference, and the counters end equal to the charges."""
    batches = []
    for n in range(4):
        message = store_messages.NewMessage(f"msg_{n}", "250788000001", 1, 75)
        batches.append(plain_batch(f"bat_{n}", AT, [message]))
        assert await store_messages.reserve(store, "prc_test", batches[-1]) is None
    early = reports.Report("bat_2", "p2", "250788000001", "D")
    assert await reports.receive_report(store, early, AT, 0.0) == "pending"
    charged = {0: (1, 75), 1: (3, 225), 2: (1, 75), 3: (1, 70)}
    await asyncio.gather(
        *(
            settlement.settle(
                store,
                "prc_test",
                batch,
                [store_settle.Outcome(f"msg_{n}", "sent", AT, *charged[n], f"p{n}")],
            )
            for n, batch in enumerate(batches)
        )
    )
    assert query(
        database, "SELECT id, status, segments, charged_segments, cost FROM messages ORDER BY id"
    ) == [
        ("msg_0", "sent", 1, 1, 75),
        ("msg_1", "sent", 1, 3, 225),
        ("msg_2", "delivered", 1, 1, 75),
        ("msg_3", "sent", 1, 1, 70),
    ]
    assert query(database, "SELECT period, messages, segments, cost FROM usage ORDER BY 1") == [
        ("2026-11", 4, 6, 445),
        ("2026-11-26", 4, 6, 445),
    ]
    assert ledger_mismatches(database) == []


async def test_one_key_claimed_through_two_stores_is_reserved_once(
    store: Store, database: str
) -> None:
    claim = store_messages.IdempotencyClaim("otp-1", "hash", 86400)
    async with opened(database) as other:
        results = await asyncio.gather(
            *(
                store_messages.reserve(
                    (store, other)[n % 2],
                    "prc_test",
                    plain_batch(
                        f"bat_{n}",
                        AT,
                        [store_messages.NewMessage(f"msg_{n}", "250788000001", 1, 75)],
                    ),
                    claim,
                )
                for n in range(10)
            )
        )
    assert results.count(None) == 1
    assert all(isinstance(r, store_messages.PriorAnswer) and r.in_flight for r in results if r)
    assert query(database, "SELECT COUNT(*) FROM messages") == [(1,)]


async def test_a_report_racing_its_settlement_is_applied_once(store: Store, database: str) -> None:
    """The report arrives (through one store) while the send settles (through the other):
    whichever goes first, the message ends delivered, with one webhook."""
    await store.run("UPDATE teams SET callback_url = 'http://127.0.0.1:9/hooks'")
    async with opened(database) as other:
        for n in range(20):
            message = store_messages.NewMessage(f"msg_{n:03d}", "250788000001", 1, 75)
            batch = plain_batch(f"bat_{n:03d}", AT, [message])
            assert await store_messages.reserve(store, "prc_test", batch) is None
            sent = store_settle.Outcome(message.id, "sent", AT, 1, 75, f"p{n}")
            report = reports.Report(batch.batch_id, f"p{n}", "250788000001", "D")
            _, received = await asyncio.gather(
                settlement.settle(store, "prc_test", batch, [sent]),
                reports.receive_report(other, report, AT, 0.0),
            )
            assert received in ("applied", "pending")
    assert query(database, "SELECT status, COUNT(*) FROM messages GROUP BY 1") == [
        ("delivered", 20)
    ]
    assert query(database, "SELECT COUNT(*) FROM webhooks") == [(20,)]
    assert query(database, "SELECT COUNT(*) FROM dlr_reports WHERE outcome IS NULL") == [(0,)]


async def test_webhooks_claimed_through_two_stores_are_claimed_once(
    store: Store, database: str
) -> None:
    message = store_messages.NewMessage("msg_1", "250788000001", 1, 75)
    batch = plain_batch("bat_1", AT, [message])
    assert await store_messages.reserve(store, "prc_test", batch) is None
    for n in range(60):
        await store.run(
            "INSERT INTO webhooks (id, message_id, team_id, type, url, payload, status,"
            " next_attempt_at, created_at) VALUES (?, 'msg_1', 'payments', 'message.failed',"
            " 'http://127.0.0.1:9/', '{}', 'pending', ?, ?)",
            (f"whk_{n:03d}", AT, AT),
        )
    async with opened(database) as other:
        claims = await asyncio.gather(
            *(
                outbox.claim_due_webhooks((store, other)[n % 2], f"prc_{n % 2}", 7, 30)
                for n in range(20)
            )
        )
    claimed = [hook.id for batch_ in claims for hook in batch_]
    assert sorted(claimed) == [f"whk_{n:03d}" for n in range(60)]  # each once, none left
    assert all(hook.secret == "whsec_x" for batch_ in claims for hook in batch_)


@pytest.mark.postgresql
async def test_a_read_cancelled_midway_leaves_the_pool_usable(database: str) -> None:
    """A request cancelled while its query runs (a client gone, a timeout) must not hand the
    next request a connection still in the middle of that query."""
    from gateway.store.postgres import PostgresStore

    store = PostgresStore(database, pool_size=1)
    await store.open()
    try:
        for _ in range(3):
            with pytest.raises(TimeoutError):
                async with asyncio.timeout(0.2):
                    await store.fetchone("SELECT pg_sleep(2)")
            row = await store.fetchone("SELECT 41 + 1 AS answer")
            assert row is not None and row["answer"] == 42
    finally:
        await store.close()


@pytest.mark.postgresql
async def test_a_connection_whose_backend_was_ended_is_not_pooled_again(database: str) -> None:
    """PostgreSQL ending a backend (a restart, an administrator) fails the query running on it;
    that connection must be dropped, not handed to the next request half-way through an error."""
    from gateway.store.postgres import PostgresStore

    store = PostgresStore(database, pool_size=1)
    await store.open()
    name = database.rsplit("/", 1)[1]
    await store.run(
        "CREATE FUNCTION slow_group(items JSONB) RETURNS TEXT[] LANGUAGE sql"
        " AS $$ SELECT pg_sleep(1); SELECT ARRAY['done'] $$"
    )

    async def grouped(_sql: str) -> str:
        return await store.call_grouped("slow_group", {})

    try:
        for work in (store.fetchone, store.run, grouped) * 2:
            running = asyncio.ensure_future(work("SELECT pg_sleep(1) AS slept"))
            await asyncio.sleep(0.2)
            query(
                database,
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                " WHERE datname = ? AND pid <> pg_backend_pid()",
                name,
            )
            with contextlib.suppress(DatabaseUnreachable):  # a write may not be retried
                await running
            for _ in range(3):
                row = await store.fetchone("SELECT 41 + 1 AS answer")
                assert row is not None and row["answer"] == 42
    finally:
        await store.close()


@pytest.mark.postgresql
async def test_a_grouped_call_chosen_as_a_deadlock_victim_runs_again(database: str) -> None:
    """PostgreSQL rolls back one side of a deadlock; when that is a group of sends, the group
    is sent again whole (nothing of it was kept) and its callers get their answers."""
    import asyncpg

    from gateway.store.postgres import PostgresStore

    store = PostgresStore(database)
    await store.open()
    await store.run("CREATE TABLE pair (id INTEGER PRIMARY KEY, v INTEGER NOT NULL)")
    await store.run("INSERT INTO pair VALUES (1, 0), (2, 0)")
    await store.run(
        "CREATE FUNCTION pair_group(items JSONB) RETURNS TEXT[] LANGUAGE sql AS $$"
        " UPDATE pair SET v = v + 1 WHERE id = 1; UPDATE pair SET v = v + 1 WHERE id = 2;"
        " SELECT ARRAY['done'] $$"
    )
    other = await asyncpg.connect(database)
    try:
        async with other.transaction():
            await other.execute("UPDATE pair SET v = v + 10 WHERE id = 2")
            grouped = asyncio.ensure_future(store.call_grouped("pair_group", {}))
            await asyncio.sleep(0.3)  # the group holds row 1 and waits for row 2
            # A deadlock: the group waited first, so its deadlock check fires first and it is
            # the one rolled back; this transaction then gets row 1.
            await other.execute("UPDATE pair SET v = v + 10 WHERE id = 1")
        assert await grouped == "done"
        assert query(database, "SELECT id, v FROM pair ORDER BY id") == [(1, 11), (2, 11)]
    finally:
        await other.close()
        await store.close()


async def until(check: object, within: float = 5.0) -> None:
    """Until `check()` is true."""
    assert callable(check)
    async with asyncio.timeout(within):
        while not check():
            await asyncio.sleep(0.02)


async def test_a_team_changed_elsewhere_leaves_the_send_path_cache(
    store: Store, database: str
) -> None:
    cache = teams.TeamCache()
    if store.kind == "postgresql":
        await until(lambda: store.teams_version() is not None)  # the listener is up
    team = await cache.get(store, "payments", rechecked=True)
    assert team is not None and team.daily_limit == 40
    # another replica (or the CLI) changes the team: the send path sees it once told
    await asyncio.to_thread(
        query, database, "UPDATE teams SET daily_limit = 7 WHERE id = 'payments'"
    )
    async with asyncio.timeout(5):
        while (
            team := await cache.get(store, "payments", rechecked=True)
        ) and team.daily_limit != 7:
            await asyncio.sleep(0.02)
    # a disabled team is never kept: enabled again elsewhere, it is not refused meanwhile
    await asyncio.to_thread(query, database, "UPDATE teams SET active = 0 WHERE id = 'payments'")
    async with asyncio.timeout(5):
        while (team := await cache.get(store, "payments", rechecked=True)) and team.active:
            await asyncio.sleep(0.02)
    await asyncio.to_thread(query, database, "UPDATE teams SET active = 1 WHERE id = 'payments'")
    team = await cache.get(store, "payments", rechecked=True)
    assert team is not None and team.active  # read again at once, no notification needed


@pytest.mark.postgresql
async def test_the_team_change_listener_comes_back_after_its_connection_is_ended(
    store: Store, database: str
) -> None:
    await until(lambda: store.teams_version() is not None)
    before = store.teams_version()
    assert before is not None
    name = database.rsplit("/", 1)[1]
    ended = await asyncio.to_thread(
        query,
        database,
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
        " WHERE datname = ? AND query LIKE 'LISTEN%'",
        name,
    )
    assert ended == [(True,)]
    await until(lambda: store.teams_version() is None, within=5)  # nothing cached meanwhile
    await until(lambda: store.teams_version() is not None, within=10)  # listening again
    after = store.teams_version()
    assert after is not None and after > before  # what it cached before is not trusted
