"""SQLite: a writer on the event loop's thread, a reader on its own, migrations on open.

Writes run on the event loop's thread, grouped: every write that arrives while the loop goes
round once shares one transaction and one COMMIT (group commit). SQLite spends a few
microseconds of CPU on a write; handing each to another thread cost more than that, in the
hand-off itself and in the two threads taking turns at the GIL (measured under `bench/`). What
could block the loop is kept off it: waiting for a write lock held by another process (the
group is then run on a worker thread, which waits for it) and WAL checkpoints, with their fsync
(a background task runs them on a worker thread). Reads go through aiosqlite's thread, so a
large page does not hold up sends.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import threading
from collections.abc import Callable, Coroutine, Iterable, Sequence
from importlib import resources
from typing import Any, TypeVar

import aiosqlite

from .db import Row, Statement, Store, Tx, Write
from .errors import DatabaseBusy, SchemaTooNew, StoreClosed
from .migrations import MIGRATIONS

T = TypeVar("T")
MAX_GROUP = 256  # writes per group commit
PRAGMAS = ("foreign_keys=ON", "synchronous=NORMAL")
Group = list[tuple[Callable[..., Any], tuple[Any, ...]]]


def _text(sql: Statement) -> str:
    return sql if isinstance(sql, str) else sql.sqlite


class SqliteTx(Tx):
    """The writer connection inside a group's transaction. Its coroutines never wait: each
    statement runs at once, so a write runs to its end on the thread that starts it."""

    dialect = "sqlite"
    __slots__ = ("conn",)

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn

    async def execute(self, sql: Statement, params: Sequence[Any] = ()) -> int:
        return self.conn.execute(_text(sql), params).rowcount

    async def fetchone(self, sql: Statement, params: Sequence[Any] = ()) -> Row | None:
        return self.conn.execute(_text(sql), params).fetchone()

    async def fetchall(self, sql: Statement, params: Sequence[Any] = ()) -> list[Row]:
        return self.conn.execute(_text(sql), params).fetchall()

    async def executemany(self, sql: Statement, rows: Iterable[Sequence[Any]]) -> None:
        rows = list(rows)
        if rows:
            self.conn.executemany(_text(sql), rows)


def _complete(coro: Coroutine[Any, Any, T]) -> T:
    """Run a write's coroutine to its end on this thread (on SQLite it never waits)."""
    try:
        coro.send(None)
    except StopIteration as done:
        result: T = done.value
        return result
    coro.close()
    raise RuntimeError("a write waited for something other than SQLite")


class SqliteStore(Store):
    """A SQLite file shared by this process's writer, readers and checkpointer."""

    kind = "sqlite"

    def __init__(
        self, path: str, *, busy_timeout: float = 10.0, checkpoint_every: float = 1.0
    ) -> None:
        self.path = path
        self.busy_timeout = busy_timeout
        self.checkpoint_every = checkpoint_every
        self._writer: sqlite3.Connection | None = None
        self._reader: aiosqlite.Connection | None = None
        self._checkpointer: sqlite3.Connection | None = None
        self._quick: sqlite3.Connection | None = None
        self._writer_elsewhere = False  # a group runs on a worker thread, waiting for a lock
        self._checkpointing = threading.Lock()
        self._checkpoints: asyncio.Task[None] | None = None
        self._pending: list[tuple[Callable[..., Any], tuple[Any, ...], asyncio.Future[Any]]] = []
        self._drainer: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None  # the loop the store was opened on
        self._version: int | None = None  # data_version as read since the loop last polled

    async def open(self) -> None:
        """Connect, switch to WAL and bring the schema up to date."""
        # Kept, not asked for on every write: asking costs a getpid() system call each time.
        self._loop = asyncio.get_running_loop()
        # Used on the loop's thread, and on a worker thread only while the loop waits for it.
        self._writer = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        self._writer.row_factory = sqlite3.Row
        wait = f"busy_timeout={int(self.busy_timeout * 1000)}"
        # Until the schema is ready, wait for locks: several processes may start together on a
        # new file, and switching it to WAL needs a moment alone with it.
        for pragma in (*PRAGMAS, wait):
            self._writer.execute(f"PRAGMA {pragma}")
        found = int(self._writer.execute("PRAGMA user_version").fetchone()[0])
        if found > len(MIGRATIONS):  # before anything, even the journal mode, is changed
            self._writer.close()
            self._writer = None
            raise SchemaTooNew(found, len(MIGRATIONS))
        if self.path != ":memory:":  # (a second :memory: connection would be another database)
            self._writer.execute("PRAGMA journal_mode=WAL")
            self._writer.execute("PRAGMA wal_autocheckpoint=0")  # see _checkpoint_loop
        _migrate(self._writer)
        self._writer.execute("PRAGMA busy_timeout=0")  # from now on, never wait on the loop
        if self.path != ":memory:":
            # Small reads on the loop's own thread (a team by its id): microseconds, no hand-off.
            self._quick = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            self._quick.row_factory = sqlite3.Row
            for pragma in (*PRAGMAS, "busy_timeout=0"):
                self._quick.execute(f"PRAGMA {pragma}")
            self._reader = await aiosqlite.connect(self.path, isolation_level=None)
            self._reader.row_factory = aiosqlite.Row
            for pragma in (*PRAGMAS, f"busy_timeout={int(self.busy_timeout * 1000)}"):
                await _pragma(self._reader, pragma)
            self._checkpointer = sqlite3.connect(
                self.path, isolation_level=None, check_same_thread=False
            )
            self._checkpointer.execute(f"PRAGMA {wait}")
        if self._checkpointer is not None:
            self._checkpoints = self._loop.create_task(self._checkpoint_loop())

    async def close(self) -> None:
        """Finish the writes under way, then close every connection."""
        while self._drainer is not None and not self._drainer.done():
            await asyncio.wait([self._drainer])
        if self._checkpoints is not None:
            self._checkpoints.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._checkpoints
        if self._reader is not None:
            await self._reader.close()
        # A checkpoint cancelled above may still run on its thread: wait for it, off the loop.
        await asyncio.to_thread(self._close_checkpointer)
        for conn in (self._quick, self._writer):
            if conn is not None:
                conn.close()
        self._reader = self._writer = self._checkpointer = self._quick = None
        self._checkpoints = None

    def _close_checkpointer(self) -> None:
        with self._checkpointing:
            if self._checkpointer is not None:
                self._checkpointer.close()
                self._checkpointer = None

    async def write(self, fn: Write[T], *args: Any) -> T:
        """Run `fn(tx, *args)` atomically; its result (or its exception).

        Writes that arrive while the loop goes round once are grouped into one transaction with
        one COMMIT (group commit). An error in one undoes only that one (see _transact_group).
        """
        if self._writer is None or self._loop is None:
            raise StoreClosed("the database is closed")
        future: asyncio.Future[Any] = self._loop.create_future()
        self._pending.append((fn, args, future))
        if self._drainer is None or self._drainer.done():
            self._drainer = self._loop.create_task(self._drain())
        result: T = await future
        return result

    async def _drain(self) -> None:
        assert self._writer is not None, "store is not open"
        conn = self._writer
        await asyncio.sleep(0)  # the handlers that are ready to run add their writes first
        while self._pending:
            group, self._pending = self._pending[:MAX_GROUP], self._pending[MAX_GROUP:]
            items = [(fn, args) for fn, args, _ in group]
            try:
                try:
                    outcomes = _transact_group(conn, items)
                except sqlite3.OperationalError as exc:
                    if exc.sqlite_errorcode != sqlite3.SQLITE_BUSY:
                        raise
                    # Another process holds the write lock: wait for it off the loop's thread.
                    self._writer_elsewhere = True
                    try:
                        outcomes = await asyncio.to_thread(
                            _transact_waiting, conn, items, self.busy_timeout
                        )
                    finally:
                        self._writer_elsewhere = False
            except BaseException as exc:  # the transaction itself failed: every write did
                if isinstance(exc, sqlite3.OperationalError) and (
                    exc.sqlite_errorcode == sqlite3.SQLITE_BUSY
                ):
                    exc = DatabaseBusy(self.busy_timeout)
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

    async def checkpoint(self) -> tuple[int, int, int]:
        """Copy the WAL into the database file (PASSIVE: never waits for the writer), on a
        worker thread; SQLite's (busy, WAL frames, frames checkpointed)."""
        conn = self._checkpointer
        if conn is None:
            return (0, 0, 0)

        def run() -> tuple[int, int, int]:
            with self._checkpointing:  # close() waits for this before closing the connection
                if self._checkpointer is None:
                    return (0, 0, 0)
                row = conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
                return int(row[0]), int(row[1]), int(row[2])

        return await asyncio.to_thread(run)

    async def _checkpoint_loop(self) -> None:
        """Checkpoint every `checkpoint_every` seconds, instead of inside a COMMIT on the loop."""
        while True:
            await asyncio.sleep(self.checkpoint_every)
            try:
                await self.checkpoint()
            except sqlite3.Error:  # a busy or closing database: the next round tries again
                continue

    async def fetchall(self, sql: Statement, params: Iterable[Any] = ()) -> list[Row]:
        """All rows from the reader (one round trip)."""
        if self._reader is None:  # :memory: has one connection, the writer
            assert self._writer is not None, "store is not open"
            return self._writer.execute(_text(sql), tuple(params)).fetchall()
        return list(await self._reader.execute_fetchall(_text(sql), tuple(params)))

    def data_version(self) -> int | None:
        """SQLite's count of commits made through other connections (other processes, the
        CLI) as the writer sees it; None when it cannot be asked now. Unchanged means nothing
        but this process has written the database since."""
        if self._writer is None or self._writer_elsewhere or self._reader is None:
            return None
        if self._version is None and self._loop is not None:
            # Read once until the loop next polls for I/O: every request that arrives after a
            # commit elsewhere is read from a poll after it, and runs after _forget_version
            # (scheduled first), so it sees the new number. Asking costs a statement (per
            # request, 4 % of a send's CPU under load).
            self._version = int(self._writer.execute("PRAGMA data_version").fetchone()[0])
            self._loop.call_soon(self._forget_version)
        return self._version

    def _forget_version(self) -> None:
        self._version = None

    async def read_now(self, sql: Statement, params: Iterable[Any] = ()) -> Row | None:
        """One row of a small indexed read, on the loop's thread when the file allows it.

        A WAL reader never waits for the writer, so this costs microseconds; in the rare case
        that SQLite answers busy (another process recovering the WAL) it goes to the reader.
        """
        conn = self._quick or self._writer  # (only :memory: has no separate reader)
        assert conn is not None, "store is not open"
        try:
            row: Row | None = conn.execute(_text(sql), tuple(params)).fetchone()
            return row
        except sqlite3.OperationalError as exc:
            if exc.sqlite_errorcode != sqlite3.SQLITE_BUSY:
                raise
            return await self.fetchone(sql, params)


def _migrate(conn: sqlite3.Connection) -> None:
    """Bring the schema up to `len(MIGRATIONS)` (recorded in PRAGMA user_version) in one
    transaction, which also makes processes that start together take turns; a database newer
    than this code is left untouched."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        version = int(conn.execute("PRAGMA user_version").fetchone()[0])
        if version > len(MIGRATIONS):
            raise SchemaTooNew(version, len(MIGRATIONS))
        for number, name in enumerate(MIGRATIONS, start=1):
            if number > version:
                script = resources.files("gateway.store").joinpath(name.sqlite).read_text()
                for statement in statements(script):
                    conn.execute(statement)
                conn.execute(f"PRAGMA user_version={number}")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    _commit(conn)


def _transact_group(conn: sqlite3.Connection, group: Group) -> list[tuple[bool, Any]]:
    """The group's writes in one transaction (on the loop's thread, or on a worker thread
    while another process holds the write lock).

    Writes rarely fail, so the group first runs without a savepoint each (fewer statements).
    If one raises, that transaction is rolled back and the group runs again with a savepoint
    per write, so only the failing write is undone. A write is a function of the database
    and its arguments, so running it again after a rollback is the same as running it once.
    """
    conn.execute("BEGIN IMMEDIATE")
    try:
        tx = SqliteTx(conn)
        outcomes: list[tuple[bool, Any]] = [(True, _complete(fn(tx, *args))) for fn, args in group]
    except Exception:
        conn.execute("ROLLBACK")
        return _transact_each(conn, group)
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    _commit(conn)
    return outcomes


def _commit(conn: sqlite3.Connection) -> None:
    """COMMIT; if it fails (a full disk, say), roll back so the next BEGIN starts clean."""
    try:
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise


def _transact_each(conn: sqlite3.Connection, group: Group) -> list[tuple[bool, Any]]:
    """One transaction, a savepoint per write: a write that raises is undone, the rest commit."""
    outcomes: list[tuple[bool, Any]] = []
    tx = SqliteTx(conn)
    conn.execute("BEGIN IMMEDIATE")
    try:
        for fn, args in group:
            conn.execute("SAVEPOINT one_write")
            try:
                outcomes.append((True, _complete(fn(tx, *args))))
            except Exception as exc:  # this write is undone; the others go on
                conn.execute("ROLLBACK TO one_write")
                outcomes.append((False, exc))
            conn.execute("RELEASE one_write")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    _commit(conn)
    return outcomes


def _transact_waiting(
    conn: sqlite3.Connection, group: Group, seconds: float
) -> list[tuple[bool, Any]]:
    """`_transact_group`, waiting up to `seconds` for the write lock (on a worker thread)."""
    conn.execute(f"PRAGMA busy_timeout={int(seconds * 1000)}")
    try:
        return _transact_group(conn, group)
    finally:
        conn.execute("PRAGMA busy_timeout=0")


async def _pragma(conn: aiosqlite.Connection, pragma: str) -> None:
    """Run a PRAGMA and close its cursor (an open one can hold a lock)."""
    async with conn.execute(f"PRAGMA {pragma}"):
        pass


def statements(script: str) -> list[str]:
    """A schema file's statements, as SQLite's own tokenizer ends them (executescript would
    commit the migration's transaction, and a `;` in a string or comment is no boundary)."""
    found: list[str] = []
    pending = ""
    for line in script.splitlines(keepends=True):
        pending += line
        if sqlite3.complete_statement(pending):
            found.append(pending.strip())
            pending = ""
    if pending.strip() and not all(
        part.strip().startswith("--") or not part.strip() for part in pending.splitlines()
    ):
        raise ValueError(f"unterminated statement in schema: {pending.strip()[:60]!r}")
    return found
