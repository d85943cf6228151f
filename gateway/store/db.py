"""One store, two databases: SQLite (the embedded default) or PostgreSQL (several replicas).

Every write is a coroutine function `fn(tx, *args)` run in one transaction by `Store.write`;
it talks to the database only through its `Tx`. The SQL both databases accept is written once,
in SQLite's placeholder style (`?`, `?N`), and PostgreSQL's `$N` is derived from it; where the
two differ (JSON functions, row locks, `SKIP LOCKED`) a statement is an `Sql` pair, so a reader
sees both versions side by side.
"""

from __future__ import annotations

import abc
import secrets
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Any, ClassVar, NamedTuple, TypeVar
from urllib.parse import urlsplit, urlunsplit

T = TypeVar("T")
Row = Any  # sqlite3.Row or asyncpg.Record: both index by column name and by position


class Sql(NamedTuple):
    """One statement as each database writes it."""

    sqlite: str
    postgresql: str


Statement = str | Sql


class Tx(abc.ABC):
    """The connection of one transaction, as the write functions see it."""

    dialect: ClassVar[str]  # "sqlite" | "postgresql"

    @abc.abstractmethod
    async def execute(self, sql: Statement, params: Sequence[Any] = ()) -> int:
        """Run one statement; how many rows it changed."""

    @abc.abstractmethod
    async def fetchone(self, sql: Statement, params: Sequence[Any] = ()) -> Row | None:
        """The first row of a query (or a statement's RETURNING), or None."""

    @abc.abstractmethod
    async def fetchall(self, sql: Statement, params: Sequence[Any] = ()) -> list[Row]:
        """Every row of a query (or a statement's RETURNING)."""

    @abc.abstractmethod
    async def executemany(self, sql: Statement, rows: Iterable[Sequence[Any]]) -> None:
        """Run one statement once per parameter row."""


Write = Callable[..., Awaitable[T]]


class Store(abc.ABC):
    """Owns the database connections; every write goes through `write()` (or `run()`)."""

    kind: ClassVar[str]  # "sqlite" | "postgresql", as the start line names it

    @abc.abstractmethod
    async def open(self) -> None:
        """Connect and bring the schema up to date (safely when several processes start)."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Finish the writes under way, then close every connection."""

    @abc.abstractmethod
    async def write(self, fn: Write[T], *args: Any) -> T:
        """Run `await fn(tx, *args)` in one transaction; its result (or its exception)."""

    @abc.abstractmethod
    async def fetchall(self, sql: Statement, params: Iterable[Any] = ()) -> list[Row]:
        """All rows of a read (one round trip)."""

    async def fetchone(self, sql: Statement, params: Iterable[Any] = ()) -> Row | None:
        """One row of a read (one round trip)."""
        return next(iter(await self.fetchall(sql, params)), None)

    async def read_now(self, sql: Statement, params: Iterable[Any] = ()) -> Row | None:
        """One row of a small indexed read on the request path (the quickest way there is)."""
        return await self.fetchone(sql, params)

    def data_version(self) -> int | None:
        """A number that moves whenever another process commits, where the database offers
        one cheaply; None means "ask the database each time"."""
        return None

    def teams_version(self) -> int | None:
        """A number that moves whenever a team changes anywhere, for caches whose every use is
        checked again in the database (the send path); None means "ask the database"."""
        return self.data_version()

    async def checkpoint(self) -> tuple[int, int, int]:
        """SQLite's WAL checkpoint (busy, frames, checkpointed); nothing to do elsewhere."""
        return (0, 0, 0)

    async def call_grouped(self, function: str, item: Any) -> str:
        """Call a server-side group function (`function(items JSONB) RETURNS TEXT[]`, which
        decides each item on its own) for `item`, sharing the call with the others made at the
        same moment; the item's entry. An entry naming one of the schema's refusals (`GWxxx`)
        raises Refused, and that item changed nothing. Only PostgreSQL has such functions."""
        raise NotImplementedError(f"{self.kind} has no server-side functions")

    async def run(self, sql: Statement, params: Iterable[Any] = ()) -> int:
        """One write statement, atomically; its rowcount."""
        return await self.write(_run, sql, tuple(params))

    async def secret(self, name: str) -> bytes:
        """A random 32-byte key kept in the database, made on first use (e.g. for DLR tokens);
        every process sharing the database gets the same one."""
        row = await self.fetchone("SELECT value FROM meta WHERE key = ?", (name,))
        if row is None:
            await self.run(
                "INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT (key) DO NOTHING",
                (name, secrets.token_hex(32)),
            )
            row = await self.fetchone("SELECT value FROM meta WHERE key = ?", (name,))
        assert row is not None
        return bytes.fromhex(row["value"])


async def _run(tx: Tx, sql: Statement, params: tuple[Any, ...]) -> int:
    return await tx.execute(sql, params)


def is_postgres(database: str) -> bool:
    """Whether GATEWAY_DATABASE names a PostgreSQL database rather than a SQLite file."""
    return database.startswith(("postgresql://", "postgres://"))


def describe(database: str) -> str:
    """The database as it may be printed: a PostgreSQL URL without its password."""
    if not is_postgres(database):
        return database
    parts = urlsplit(database)
    if parts.password is None:
        return database
    netloc = parts.netloc.rsplit("@", 1)[1]
    user = parts.username or ""
    return urlunsplit(parts._replace(netloc=f"{user}:***@{netloc}"))


def make_store(database: str, *, busy_timeout: float = 10.0) -> Store:
    """The store for GATEWAY_DATABASE: a PostgreSQL URL, or a SQLite file (`:memory:`)."""
    if is_postgres(database):
        from .postgres import PostgresStore

        return PostgresStore(database)
    from .sqlite import SqliteStore

    return SqliteStore(database, busy_timeout=busy_timeout)
