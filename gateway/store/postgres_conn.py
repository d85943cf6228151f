"""How a pooled PostgreSQL connection fails, and how long each failure is retried."""

from __future__ import annotations

import asyncio
import random

import asyncpg
from asyncpg.pool import PoolConnectionProxy

from .errors import DatabaseBusy, DatabaseUnreachable

Connection = asyncpg.Connection | PoolConnectionProxy
CONFLICT_RETRIES = 10  # deadlocks and serialization failures: the write runs again

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


class NoConnection(Exception):
    """No connection could be had from the pool; nothing was sent on one."""


RETRYABLE: tuple[type[BaseException], ...] = (NoConnection, *CONNECTION_ERRORS)


class Patience:
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


class Conflicts:
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
