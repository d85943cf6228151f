"""PostgreSQL: a connection pool shared by every write and read, for several replicas.

asyncpg, rather than psycopg 3: it speaks PostgreSQL's binary protocol from C, prepares and
caches each statement on its connection, and pipelines `executemany`, which is what short
transactions need (docs/performance.md). Each write is its own transaction on a pooled
connection; PostgreSQL's row locks, not a single writer, make concurrent writes safe. The send
path's two calls are grouped (`call_grouped`): the sends ready at the same moment share one
call, one round trip and one COMMIT, as SQLite's writes share one transaction.
Only transaction-scoped advisory locks are taken, so a PgBouncer in transaction mode works (with
`max_prepared_statements` set, as asyncpg prepares its statements).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from importlib import resources
from itertools import count
from typing import Any, TypeVar

import asyncpg

from .db import Row, Statement, Store, Tx, Write, describe
from .errors import DatabaseBusy, DatabaseUnreachable, Refused, SchemaTooNew, StoreClosed
from .migrations import MIGRATIONS
from .postgres_conn import (
    BROKEN,
    CONFLICTS,
    CONNECTION_ERRORS,
    RETRYABLE,
    UNREACHABLE,
    Conflicts,
    Connection,
    NoConnection,
    Patience,
)
from .postgres_group import GroupCommit
from .postgres_listen import TeamChanges

T = TypeVar("T")
POOL_SIZE = 10  # connections per process
RETRY_FOR = 1.0  # seconds a lost connection is retried before a write gives up
MIGRATION_LOCK = 0x736D735F67617465  # pg_advisory_xact_lock key held while migrating

log = logging.getLogger("gateway.store")


_MARK = re.compile(r"\?(\d*)")
_translated: dict[str, str] = {}


def postgres_sql(sql: Statement) -> str:
    """The statement in PostgreSQL's placeholders: `?N` becomes `$N`, and each bare `?` the
    next number (translated once per statement text)."""
    text = sql if isinstance(sql, str) else sql.postgresql
    found = _translated.get(text)
    if found is None:
        numbers = count(1)
        found = _MARK.sub(lambda m: "$" + (m.group(1) or str(next(numbers))), text)
        _translated[text] = found
    return found


def _rowcount(status: str) -> int:
    """Rows changed, from a command tag ("UPDATE 3", "INSERT 0 1"); 0 for other commands."""
    last = status.rpartition(" ")[2]
    return int(last) if last.isdigit() else 0


class PostgresTx(Tx):
    """A pooled connection inside one write's transaction."""

    dialect = "postgresql"
    __slots__ = ("conn",)

    def __init__(self, conn: Connection) -> None:
        self.conn = conn

    async def execute(self, sql: Statement, params: Sequence[Any] = ()) -> int:
        return _rowcount(await self.conn.execute(postgres_sql(sql), *params))

    async def fetchone(self, sql: Statement, params: Sequence[Any] = ()) -> Row | None:
        return await self.conn.fetchrow(postgres_sql(sql), *params)

    async def fetchall(self, sql: Statement, params: Sequence[Any] = ()) -> list[Row]:
        return list(await self.conn.fetch(postgres_sql(sql), *params))

    async def executemany(self, sql: Statement, rows: Iterable[Sequence[Any]]) -> None:
        rows = list(rows)
        if rows:
            await self.conn.executemany(postgres_sql(sql), rows)


class PostgresStore(Store):
    """One PostgreSQL database shared by any number of gateway processes."""

    kind = "postgresql"

    def __init__(
        self, dsn: str, *, pool_size: int = POOL_SIZE, retry_for: float = RETRY_FOR
    ) -> None:
        self.dsn = dsn
        self.pool_size = pool_size
        self.retry_for = retry_for
        self._pool: asyncpg.Pool | None = None
        self._team_changes = TeamChanges(dsn)
        self._groups: GroupCommit | None = None

    async def open(self) -> None:
        self._groups = GroupCommit(self._retried)
        try:
            self._pool = await asyncpg.create_pool(
                self.dsn,
                min_size=1,
                max_size=self.pool_size,
                command_timeout=30,
                timeout=5,
                server_settings={"application_name": "sms-gateway", "jit": "off"},
                reset=_keep,
            )
        except CONNECTION_ERRORS as exc:
            raise DatabaseUnreachable(f"{describe(self.dsn)}: {exc}") from None
        except asyncpg.PostgresError as exc:  # no such database, authentication refused
            raise DatabaseUnreachable(f"{describe(self.dsn)}: {exc}") from None
        try:
            async with self._pool.acquire() as conn:
                await _migrate(conn)
        except BaseException:
            await self._pool.close()
            self._pool = None
            raise

    def teams_version(self) -> int | None:
        """Team changes heard so far; None until the listener (started by the first ask, so
        the CLI and the processes that never send open no connection for it) is listening."""
        return self._team_changes.version(self._pool is not None)

    async def close(self) -> None:
        if self._groups is not None:
            await self._groups.close()  # grouped calls under way end first (they hold callers)
        await self._team_changes.close()
        if self._pool is not None:
            pool, self._pool = self._pool, None
            try:
                await asyncio.wait_for(pool.close(), 10)
            except TimeoutError:
                pool.terminate()

    @contextlib.asynccontextmanager
    async def _connection(self) -> AsyncIterator[Connection]:
        """A pooled connection. Failing to get one (the server down, restarting, refusing the
        database) raises NoConnection: nothing was sent, so the caller may retry."""
        if self._pool is None:
            raise StoreClosed("the database is closed")
        try:
            conn = await self._pool.acquire(timeout=10)
        except TimeoutError:  # every pooled connection stayed busy, or connecting hung
            raise DatabaseBusy(10) from None
        except UNREACHABLE as exc:
            raise NoConnection(str(exc) or type(exc).__name__) from None
        try:
            yield conn
        except BROKEN:
            # The connection broke, or an operation on it stopped midway: it may be in the
            # middle of the protocol (the pool does not reset connections, see _keep), so it
            # is closed rather than handed to the next request.
            with contextlib.suppress(asyncpg.InterfaceError):  # closed and released already
                conn.terminate()
            await self._pool.release(conn)
            raise
        except BaseException:
            await self._pool.release(conn)
            raise
        await self._pool.release(conn)

    async def write(self, fn: Write[T], *args: Any) -> T:
        """Run `await fn(tx, *args)` in one transaction. A connection lost before COMMIT was
        sent is retried for `retry_for` seconds (the server rolled the transaction back), and
        so is a deadlock or serialization failure; a connection lost during COMMIT is not,
        since the write may have been made (DatabaseUnreachable with `committed_unknown`)."""
        patience = Patience(self.retry_for)
        conflicts = Conflicts(self.retry_for)
        while True:
            committing = False
            try:
                async with self._connection() as conn:
                    transaction = conn.transaction()
                    await transaction.start()
                    try:
                        result = await fn(PostgresTx(conn), *args)
                    except BaseException:
                        with contextlib.suppress(*CONNECTION_ERRORS):
                            await transaction.rollback()
                        raise
                    committing = True
                    await transaction.commit()
                    return result
            except CONFLICTS:
                await conflicts.wait()
            except RETRYABLE as exc:
                if committing:
                    raise DatabaseUnreachable(str(exc), committed_unknown=True) from None
                await patience.wait(exc)

    async def call_grouped(self, function: str, item: Any) -> str:
        """Group commit for the send path (postgres_group.py): the items of calls made while
        the loop goes round, and while every pooled connection is busy, go to the server in one
        call of `function`; each caller gets its item's entry, or its item's error."""
        if self._pool is None or self._groups is None:
            raise StoreClosed("the database is closed")
        result = await self._groups.call(function, item)
        if result.startswith("GW"):
            raise Refused(result)
        return result

    async def _retried(self, block: Callable[[Connection], Awaitable[T]]) -> T:
        """`block(conn)` on a pooled connection: failing to get one is retried for
        `retry_for` seconds, and a deadlock (nothing was kept) runs the block again."""
        patience = Patience(self.retry_for)
        conflicts = Conflicts(self.retry_for)
        while True:
            try:
                async with self._connection() as conn:
                    return await block(conn)
            except CONFLICTS:
                await conflicts.wait()
            except NoConnection as exc:
                await patience.wait(exc)

    async def fetchall(self, sql: Statement, params: Iterable[Any] = ()) -> list[Row]:
        """All rows of a read; a lost connection is retried for `retry_for` seconds."""
        patience = Patience(self.retry_for)
        text, args = postgres_sql(sql), tuple(params)
        while True:
            try:
                async with self._connection() as conn:
                    return list(await conn.fetch(text, *args))
            except RETRYABLE as exc:
                await patience.wait(exc)


async def _keep(_conn: Connection) -> None:
    """A connection going back to the pool needs no reset: the gateway keeps no session state
    on it (no LISTEN, no session advisory lock, no SET; transactions end before release), and
    one that broke or was interrupted is closed instead (_connection). asyncpg's default reset
    is one more round trip each time, three a send."""


async def _migrate(conn: Connection) -> None:
    """Bring the schema up to `len(MIGRATIONS)` in one transaction, under an advisory lock, so
    processes that start together take turns and the later ones find it done; a database
    newer than this code is left untouched."""
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1)", MIGRATION_LOCK)
        await conn.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
        version = await conn.fetchval("SELECT max(version) FROM schema_version") or 0
        if version > len(MIGRATIONS):
            raise SchemaTooNew(version, len(MIGRATIONS))
        for number, migration in enumerate(MIGRATIONS, start=1):
            if number > version:
                script = resources.files("gateway.store").joinpath(migration.postgresql)
                await conn.execute(script.read_text())  # several statements: simple protocol
        if version < len(MIGRATIONS):
            await conn.execute("DELETE FROM schema_version")
            await conn.execute("INSERT INTO schema_version VALUES ($1)", len(MIGRATIONS))
