"""Team changes on PostgreSQL: NOTIFY gateway_teams (postgres_10.sql), heard on a connection
of its own, tells every replica's team cache to read again."""

from __future__ import annotations

import asyncio
import contextlib
import logging

import asyncpg

from .postgres_conn import Connection

log = logging.getLogger("gateway.store")


class TeamChanges:
    """A count of the team changes heard; None while the connection is not listening (then
    nothing is cached)."""

    def __init__(self, dsn: str) -> None:
        self.dsn = dsn
        self._teams_seen = 0  # only ever grows
        self._heard = False  # the listener is connected and listening
        self._closed = False
        self._listener: Connection | None = None
        self._listening: asyncio.Task[None] | None = None

    def version(self, start: bool) -> int | None:
        """Team changes heard so far; None while not listening. The first ask starts the
        listener when `start` (the store is open)."""
        if self._listening is None and start:
            self._closed = False
            self._listening = asyncio.get_running_loop().create_task(self._listen())
        return self._teams_seen if self._heard else None

    async def close(self) -> None:
        """Stop listening."""
        self._closed = True
        self._heard = False
        if self._listening is not None:
            self._listening.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._listening
            self._listening = None

    async def _listen(self) -> None:
        """Keep a connection listening for team changes; reconnect (every second) if it is
        lost. Every (re)connection counts as a change: what was missed meanwhile is unknown."""
        while not self._closed:
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
