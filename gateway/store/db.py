"""The SQLite handle: one serialised writer connection, one reader, schema migrations on open."""

from __future__ import annotations

import asyncio
import secrets
import sqlite3
from collections.abc import Callable, Iterable
from importlib import resources
from typing import Any, TypeVar

import aiosqlite

T = TypeVar("T")
MAX_GROUP = 256  # writes per group commit
MIGRATIONS = ("schema_1.sql", "schema_2.sql", "schema_3.sql", "schema_4.sql", "schema_5.sql")


class Store:
    """Owns the database connections; every write goes through `write()` (or `run()`)."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._writer: aiosqlite.Connection | None = None
        self._reader: aiosqlite.Connection | None = None
        # One connection writes, a group of writes at a time (see write()); BEGIN IMMEDIATE
        # serialises against other processes.
        self._pending: list[tuple[Callable[..., Any], tuple[Any, ...], asyncio.Future[Any]]] = []
        self._drainer: asyncio.Task[None] | None = None

    async def open(self) -> None:
        """Connect, switch to WAL and bring the schema up to date."""
        self._writer = await self._connect()
        if self.path == ":memory:":
            self._reader = self._writer  # a second :memory: connection would be another database
        else:
            await _pragma(self._writer, "journal_mode=WAL")
            self._reader = await self._connect()
        await self._migrate()

    async def _connect(self) -> aiosqlite.Connection:
        conn = await aiosqlite.connect(self.path, isolation_level=None)
        conn.row_factory = aiosqlite.Row
        for pragma in ("busy_timeout=10000", "foreign_keys=ON", "synchronous=NORMAL"):
            await _pragma(conn, pragma)
        return conn

    async def close(self) -> None:
        """Close both connections."""
        if self._reader is not None and self._reader is not self._writer:
            await self._reader.close()
        if self._writer is not None:
            await self._writer.close()
        self._reader = self._writer = None

    @property
    def reader(self) -> aiosqlite.Connection:
        """The connection for reads outside a transaction (WAL gives it a consistent snapshot)."""
        assert self._reader is not None, "store is not open"
        return self._reader

    async def write(self, fn: Callable[..., T], *args: Any) -> T:
        """Run `fn(connection, *args)` atomically on the database thread; its result.

        Writes that arrive while one is running are grouped: the next round trip runs them all
        in one transaction, with one COMMIT (group commit). An error in one undoes only that
        one (see _transact_group). One group runs at a time, and only for as long as
        SQLite works: no transaction stays open while the event loop does something else.
        """
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._pending.append((fn, args, future))
        if self._drainer is None or self._drainer.done():
            self._drainer = asyncio.get_running_loop().create_task(self._drain())
        result: T = await future
        return result

    async def _drain(self) -> None:
        assert self._writer is not None, "store is not open"
        raw = self._writer._conn  # the sqlite3 connection aiosqlite runs on its own thread
        while self._pending:
            group, self._pending = self._pending[:MAX_GROUP], self._pending[MAX_GROUP:]
            try:
                # aiosqlite's own way to run a callable on its thread (no public one exists).
                outcomes = await self._writer._execute(  # type: ignore[no-untyped-call]
                    _transact_group, raw, [(fn, args) for fn, args, _ in group]
                )
            except BaseException as exc:  # the COMMIT itself failed: every write did
                for _, _, future in group:
                    if not future.done():
                        future.set_exception(exc)
                if isinstance(exc, asyncio.CancelledError):
                    raise
                continue
            for (_, _, future), (ok, value) in zip(group, outcomes, strict=True):
                if future.done():
                    continue
                if ok:
                    future.set_result(value)
                else:
                    future.set_exception(value)

    async def fetchone(self, sql: str, params: Iterable[Any] = ()) -> aiosqlite.Row | None:
        """One row from the reader (one round trip)."""
        rows = await self.reader.execute_fetchall(sql, tuple(params))
        return next(iter(rows), None)

    async def fetchall(self, sql: str, params: Iterable[Any] = ()) -> list[aiosqlite.Row]:
        """All rows from the reader (one round trip)."""
        return list(await self.reader.execute_fetchall(sql, tuple(params)))

    async def _migrate(self) -> None:
        await self.write(_migrate)

    async def run(self, sql: str, params: Iterable[Any] = ()) -> int:
        """One write statement, atomically (grouped with other writes); its rowcount."""
        return await self.write(_run, sql, tuple(params))

    async def secret(self, name: str) -> bytes:
        """A random 32-byte key kept in the database, made on first use (e.g. for DLR tokens)."""
        row = await self.fetchone("SELECT value FROM meta WHERE key = ?", (name,))
        if row is None:
            await self.run(
                "INSERT OR IGNORE INTO meta(key, value) VALUES (?, ?)",
                (name, secrets.token_hex(32)),
            )
            row = await self.fetchone("SELECT value FROM meta WHERE key = ?", (name,))
        assert row is not None
        return bytes.fromhex(row["value"])


def _run(conn: sqlite3.Connection, sql: str, params: tuple[Any, ...]) -> int:
    return conn.execute(sql, params).rowcount


def _migrate(conn: sqlite3.Connection) -> None:
    """Bring the schema up to `len(MIGRATIONS)`, recorded in PRAGMA user_version."""
    version = int(conn.execute("PRAGMA user_version").fetchone()[0])
    for number, name in enumerate(MIGRATIONS, start=1):
        if number > version:
            script = resources.files("gateway.store").joinpath(name).read_text()
            for statement in _statements(script):
                conn.execute(statement)
            conn.execute(f"PRAGMA user_version={number}")


def _transact_group(
    conn: sqlite3.Connection, group: list[tuple[Callable[..., Any], tuple[Any, ...]]]
) -> list[tuple[bool, Any]]:
    """The group's writes in one transaction; runs on the database thread.

    Writes rarely fail, so the group first runs without a savepoint each (fewer statements).
    If one raises, that transaction is rolled back and the group runs again with a savepoint
    per write, so only the failing write is undone. A write is a function of the database
    and its arguments, so running it again after a rollback is the same as running it once.
    """
    conn.execute("BEGIN IMMEDIATE")
    try:
        outcomes: list[tuple[bool, Any]] = [(True, fn(conn, *args)) for fn, args in group]
    except Exception:
        conn.execute("ROLLBACK")
        return _transact_each(conn, group)
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")
    return outcomes


def _transact_each(
    conn: sqlite3.Connection, group: list[tuple[Callable[..., Any], tuple[Any, ...]]]
) -> list[tuple[bool, Any]]:
    """One transaction, a savepoint per write: a write that raises is undone, the rest commit."""
    outcomes: list[tuple[bool, Any]] = []
    conn.execute("BEGIN IMMEDIATE")
    try:
        for fn, args in group:
            conn.execute("SAVEPOINT one_write")
            try:
                outcomes.append((True, fn(conn, *args)))
            except Exception as exc:  # this write is undone; the others go on
                conn.execute("ROLLBACK TO one_write")
                outcomes.append((False, exc))
            conn.execute("RELEASE one_write")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")
    return outcomes


async def _pragma(conn: aiosqlite.Connection, pragma: str) -> None:
    """Run a PRAGMA and close its cursor (an open one can hold a lock)."""
    async with conn.execute(f"PRAGMA {pragma}"):
        pass


def _statements(script: str) -> list[str]:
    """Split a schema file into statements (executescript would commit our transaction)."""
    lines = [line for line in script.splitlines() if not line.strip().startswith("--")]
    return [s.strip() for s in "\n".join(lines).split(";") if s.strip()]
