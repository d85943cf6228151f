"""PostgreSQL: a connection pool shared by every write and read, for several replicas.

asyncpg, rather than psycopg 3: it speaks PostgreSQL's binary protocol from C, prepares and
caches each statement on its connection, and pipelines `executemany`, which is what short
transactions need (the README has the figures). Each write is its own transaction on a pooled
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
import random
import re
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from importlib import resources
from itertools import count
from typing import Any, TypeVar

import asyncpg
import orjson
from asyncpg.pool import PoolConnectionProxy

from .db import Row, Statement, Store, Tx, Write, describe
from .errors import DatabaseBusy, DatabaseUnreachable, Refused, SchemaTooNew, StoreClosed
from .migrations import MIGRATIONS

T = TypeVar("T")
Waiting = list[tuple[Any, asyncio.Future[str]]]  # a group function's items and their callers
Connection = asyncpg.Connection | PoolConnectionProxy
POOL_SIZE = 10  # connections per process
RETRY_FOR = 1.0  # seconds a lost connection is retried before a write gives up
MIGRATION_LOCK = 0x736D735F67617465  # pg_advisory_xact_lock key held while migrating
CONFLICT_RETRIES = 10  # deadlocks and serialization failures: the write runs again
MAX_GROUP = 64  # items in one call of a group function (call_grouped)

# The server is down, restarting, out of connections, or the connection broke.
CONNECTION_ERRORS: tuple[type[BaseException], ...] = (
    OSError,
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,
    asyncpg.CannotConnectNowError,
    asyncpg.AdminShutdownError,
    asyncpg.CrashShutdownError,
    asyncpg.TooManyConnectionsError,
    asyncpg.InternalClientError,  # the driver lost track of the protocol on this connection
)
# Failing to connect at all: also the server refusing this database (it is being dropped or
# does not accept connections now).
UNREACHABLE: tuple[type[BaseException], ...] = (*CONNECTION_ERRORS, asyncpg.PostgresError)
# How a block on a pooled connection can end that leaves the connection unfit for the next one.
BROKEN: tuple[type[BaseException], ...] = (
    *CONNECTION_ERRORS,
    DatabaseUnreachable,
    asyncio.CancelledError,
)
CONFLICTS = (asyncpg.DeadlockDetectedError, asyncpg.SerializationError)

log = logging.getLogger("gateway.store")


class _NoConnection(Exception):
    """No connection could be had from the pool; nothing was sent on one."""


RETRYABLE: tuple[type[BaseException], ...] = (_NoConnection, *CONNECTION_ERRORS)


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


class _Patience:
    """How long a lost connection is retried: backoff from 20 ms, for `seconds` in all."""

    def __init__(self, seconds: float) -> None:
        self._loop = asyncio.get_running_loop()
        self._give_up = self._loop.time() + seconds
        self._delay = 0.02

    async def wait(self, exc: BaseException) -> None:
        """Sleep before the next try, or raise DatabaseUnreachable when patience ran out."""
        if self._loop.time() + self._delay > self._give_up:
            raise DatabaseUnreachable(str(exc) or type(exc).__name__) from None
        await asyncio.sleep(self._delay)
        self._delay *= 2


class _Conflicts:
    """The deadlocks and serialization failures one write met: it runs again (everything it
    did was rolled back) after a short random pause, CONFLICT_RETRIES times at most."""

    def __init__(self, busy_after: float) -> None:
        self._count = 0
        self._busy_after = busy_after

    async def wait(self) -> None:
        """Pause before the next try, or raise DatabaseBusy when the retries are spent."""
        self._count += 1
        if self._count > CONFLICT_RETRIES:
            raise DatabaseBusy(self._busy_after) from None
        await asyncio.sleep(random.uniform(0, 0.01 * self._count))


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
        self._loop: asyncio.AbstractEventLoop | None = None  # the loop the store was opened on
        # Team changes, as told by NOTIFY gateway_teams (postgres_10.sql) on a connection of
        # its own; None while that connection is not listening (then nothing is cached).
        self._teams_seen = 0  # only ever grows
        self._heard = False  # the listener is connected and listening
        self._listener: Connection | None = None
        self._listening: asyncio.Task[None] | None = None
        # call_grouped: each group function's items waiting to be sent, and the calls under way
        self._waiting: dict[str, Waiting] = {}
        self._flushes: set[asyncio.Task[None]] = set()

    async def open(self) -> None:
        # Kept, not asked for on every send: asking costs a getpid() system call each time.
        self._loop = asyncio.get_running_loop()
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
        if self._listening is None and self._pool is not None:
            self._listening = asyncio.get_running_loop().create_task(self._listen())
        return self._teams_seen if self._heard else None

    async def _listen(self) -> None:
        """Keep a connection listening for team changes; reconnect (every second) if it is
        lost. Every (re)connection counts as a change: what was missed meanwhile is unknown."""
        while self._pool is not None:
            try:
                conn = await asyncpg.connect(
                    self.dsn, timeout=5, server_settings={"application_name": "sms-gateway"}
                )
            except Exception as exc:
                log.debug("team change listener: cannot connect (%s)", exc)
            else:
                try:
                    await self._hear(conn)
                except Exception as exc:
                    log.debug("team change listener: %s", exc)
                finally:
                    self._heard = False
                    self._teams_seen += 1
                    self._listener = None
                    with contextlib.suppress(Exception):
                        conn.terminate()
            await asyncio.sleep(1.0)

    async def _hear(self, conn: Connection) -> None:
        """Listen on `conn` until it is lost."""
        lost = asyncio.Event()
        self._listener = conn
        conn.add_termination_listener(lambda _conn: lost.set())
        await conn.add_listener("gateway_teams", self._team_changed)
        self._teams_seen += 1
        self._heard = True
        await lost.wait()

    def _team_changed(self, *_args: object) -> None:
        self._teams_seen += 1

    async def close(self) -> None:
        self._heard = False
        while self._flushes:  # grouped calls under way end first (they hold their callers)
            await asyncio.wait(list(self._flushes))
        if self._listening is not None:
            self._listening.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._listening
            self._listening = None
        if self._pool is not None:
            pool, self._pool = self._pool, None
            try:
                await asyncio.wait_for(pool.close(), 10)
            except TimeoutError:
                pool.terminate()

    @contextlib.asynccontextmanager
    async def _connection(self) -> AsyncIterator[Connection]:
        """A pooled connection. Failing to get one (the server down, restarting, refusing the
        database) raises _NoConnection: nothing was sent, so the caller may retry."""
        if self._pool is None:
            raise StoreClosed("the database is closed")
        try:
            conn = await self._pool.acquire(timeout=10)
        except TimeoutError:  # every pooled connection stayed busy, or connecting hung
            raise DatabaseBusy(10) from None
        except UNREACHABLE as exc:
            raise _NoConnection(str(exc) or type(exc).__name__) from None
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
        patience = _Patience(self.retry_for)
        conflicts = _Conflicts(self.retry_for)
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
        """Group commit for the send path: the items of calls made while the loop goes round,
        and while every pooled connection is busy, go to the server in one call of `function`
        (at most MAX_GROUP items): one round trip and one COMMIT for them all, where a call each
        cost a round trip and a COMMIT each (the README has the figures). The group function
        decides each item on its own, so grouping changes no outcome. Failing to get a
        connection is retried, and so is a deadlock (nothing was kept); a connection lost
        during the call fails every item of it with DatabaseUnreachable (`committed_unknown`)."""
        if self._pool is None or self._loop is None:
            raise StoreClosed("the database is closed")
        future: asyncio.Future[str] = self._loop.create_future()
        waiting = self._waiting.setdefault(function, [])
        waiting.append((item, future))
        if len(waiting) == 1:  # the first since the last group was taken: a call is due
            self._start_flush(function)
        result = await future
        if result.startswith("GW"):
            raise Refused(result)
        return result

    def _start_flush(self, function: str) -> None:
        assert self._loop is not None, "store is not open"
        task = self._loop.create_task(self._flush(function))
        self._flushes.add(task)
        task.add_done_callback(self._flushes.discard)

    def _take(self, function: str) -> Waiting:
        """The waiting items of `function` (up to MAX_GROUP); another call for the rest."""
        waiting = self._waiting[function]
        group, rest = waiting[:MAX_GROUP], waiting[MAX_GROUP:]
        self._waiting[function] = rest
        if rest:
            self._start_flush(function)
        return group

    async def _flush(self, function: str) -> None:
        """One call of `function` for the items waiting for it, once a connection is free
        (the items that arrive meanwhile join the group); each caller gets its item's entry.
        An error that one item caused (data PostgreSQL cannot take, a constraint) fails that
        item alone: the group, rolled back whole, is called again one item at a time."""
        group: Waiting = []

        async def call(conn: Connection) -> list[str] | None:
            nonlocal group
            group = group or self._take(function)
            try:
                return await _call(conn, function, [item for item, _ in group])
            except CONFLICTS:
                raise
            except asyncpg.PostgresError as exc:
                if len(group) == 1:
                    raise
                log.warning(
                    "%s: a group of %d failed (%s); calling its items one by one",
                    function,
                    len(group),
                    type(exc).__name__,
                )
                return None

        try:
            results = await self._retried(call)
        except BaseException as exc:
            for _, future in group or self._take(function):
                if not future.done():
                    future.set_exception(exc)
            if not isinstance(exc, Exception):
                raise
            return
        if results is None:
            await asyncio.gather(*(self._call_alone(function, i, f) for i, f in group))
            return
        for (_, future), result in zip(group, results, strict=True):
            if not future.done():
                future.set_result(result)

    async def _call_alone(self, function: str, item: Any, future: asyncio.Future[str]) -> None:
        """`function` for one item in a call of its own; its caller gets the entry or error."""

        async def call(conn: Connection) -> list[str]:
            return await _call(conn, function, [item])

        try:
            result = (await self._retried(call))[0]
        except Exception as exc:
            if not future.done():
                future.set_exception(exc)
            return
        if not future.done():
            future.set_result(result)

    async def _retried(self, block: Callable[[Connection], Awaitable[T]]) -> T:
        """`block(conn)` on a pooled connection: failing to get one is retried for
        `retry_for` seconds, and a deadlock (nothing was kept) runs the block again."""
        patience = _Patience(self.retry_for)
        conflicts = _Conflicts(self.retry_for)
        while True:
            try:
                async with self._connection() as conn:
                    return await block(conn)
            except CONFLICTS:
                await conflicts.wait()
            except _NoConnection as exc:
                await patience.wait(exc)

    async def fetchall(self, sql: Statement, params: Iterable[Any] = ()) -> list[Row]:
        """All rows of a read; a lost connection is retried for `retry_for` seconds."""
        patience = _Patience(self.retry_for)
        text, args = postgres_sql(sql), tuple(params)
        while True:
            try:
                async with self._connection() as conn:
                    return list(await conn.fetch(text, *args))
            except RETRYABLE as exc:
                await patience.wait(exc)


async def _call(conn: Connection, function: str, items: list[Any]) -> list[str]:
    """One call of a group function; a connection lost during it leaves the outcome unknown."""
    try:
        results: list[str] = await conn.fetchval(
            f"SELECT {function}($1::jsonb)", orjson.dumps(items).decode()
        )
    except CONNECTION_ERRORS as exc:
        raise DatabaseUnreachable(str(exc), committed_unknown=True) from None
    return results


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
