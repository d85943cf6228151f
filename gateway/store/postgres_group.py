"""Group commit on PostgreSQL: the send path's calls that arrive together share one call of a
group function (postgres_11.sql), one round trip and one COMMIT."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import asyncpg
import orjson

from .errors import DatabaseUnreachable
from .postgres_conn import CONFLICTS, CONNECTION_ERRORS, Connection

Waiting = list[tuple[Any, asyncio.Future[str]]]  # a group function's items and their callers
Retried = Callable[[Callable[[Connection], Awaitable[Any]]], Awaitable[Any]]
MAX_GROUP = 64  # items in one call of a group function

log = logging.getLogger("gateway.store")


class GroupCommit:
    """The items waiting for each group function, and the calls under way. `retried` runs a
    block on a pooled connection, retrying a missing connection and a deadlock."""

    def __init__(self, retried: Retried) -> None:
        # Kept, not asked for on every send: asking costs a getpid() system call each time.
        self._loop = asyncio.get_running_loop()
        self._retried = retried
        self._waiting: dict[str, Waiting] = {}
        self._flushes: set[asyncio.Task[None]] = set()

    async def close(self) -> None:
        """Wait for the calls under way (they hold their callers)."""
        while self._flushes:
            await asyncio.wait(list(self._flushes))

    async def call(self, function: str, item: Any) -> str:
        """Group commit for the send path: the items of calls made while the loop goes round,
        and while every pooled connection is busy, go to the server in one call of `function`
        (at most MAX_GROUP items): one round trip and one COMMIT for them all, where a call each
        cost a round trip and a COMMIT each (docs/performance.md). The group function
        decides each item on its own, so grouping changes no outcome. Failing to get a
        connection is retried, and so is a deadlock (nothing was kept); a connection lost
        during the call fails every item of it with DatabaseUnreachable (`committed_unknown`)."""
        future: asyncio.Future[str] = self._loop.create_future()
        waiting = self._waiting.setdefault(function, [])
        waiting.append((item, future))
        if len(waiting) == 1:  # the first since the last group was taken: a call is due
            self._start_flush(function)
        return await future

    def _start_flush(self, function: str) -> None:
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


async def _call(conn: Connection, function: str, items: list[Any]) -> list[str]:
    """One call of a group function; a connection lost during it leaves the outcome unknown."""
    try:
        results: list[str] = await conn.fetchval(
            f"SELECT {function}($1::jsonb)", orjson.dumps(items).decode()
        )
    except CONNECTION_ERRORS as exc:
        raise DatabaseUnreachable(str(exc), committed_unknown=True) from None
    return results
