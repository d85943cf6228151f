"""Outcomes that could not be stored when the provider answered, written later in order."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

from ..platform.clock import iso, utcnow
from ..store import leases as store_leases
from ..store.db import Store

log = logging.getLogger("gateway.sending")


class CatchUp:
    """Settlements the database could not take in time, retried in the background.

    Their messages stay `sending` under this process's lease meanwhile; if the process stops
    first, the lease lapses and a sweep moves them to `unknown`. One that cannot land within
    `patience` seconds is given up as the sweep would: its rows `unknown` (still charged), its
    key answered 504, and a warning says so.
    """

    def __init__(
        self,
        store: Store | None = None,
        owner: str = "",
        answer_for: store_leases.AnswerFor | None = None,
        patience: float = 3600.0,
    ) -> None:
        self._tasks: set[asyncio.Task[None]] = set()
        self._store = store
        self._owner = owner
        self._answer_for = answer_for
        self.patience = patience

    def add(self, write: Callable[[], Any], what: str, batch_id: str) -> None:
        """Retry `write()` with backoff until it succeeds (or `patience` seconds pass)."""
        task = asyncio.get_running_loop().create_task(self._retry(write, what, batch_id))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _retry(self, write: Callable[[], Any], what: str, batch_id: str) -> None:
        delay, waited = 0.2, 0.0
        while True:
            try:
                await write()
            except Exception as exc:
                if waited >= self.patience:
                    await self._give_up(what, batch_id, exc)
                    return
                log.warning("could not store %s yet (%s); retrying in %g s", what, exc, delay)
                await asyncio.sleep(delay)
                waited += delay
                delay = min(delay * 2, 30.0, max(self.patience / 4, 0.05))
            else:
                log.info("stored %s after a delay", what)
                return

    async def _give_up(self, what: str, batch_id: str, error: Exception) -> None:
        """Leave the batch as the sweep would, retrying that (simpler) write until it lands."""
        if self._store is None or self._answer_for is None:
            log.error("gave up storing %s: %s", what, error)
            return
        delay = 0.2
        while True:
            try:
                changed = await store_leases.abandon(
                    self._store, self._owner, batch_id, iso(utcnow()), self._answer_for
                )
            except Exception as exc:
                log.warning("could not give up %s yet (%s)", what, exc)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 30.0)
                continue
            log.warning(
                "gave up storing %s after %g s (%s): its %d message(s) still sending are now "
                "'unknown' and stay charged",
                what,
                self.patience,
                error,
                changed,
            )
            return

    async def stop(self, grace: float = 5.0) -> None:
        """Give pending settlements `grace` seconds, then leave them to the lease's sweep."""
        if self._tasks:
            _, pending = await asyncio.wait(list(self._tasks), timeout=grace)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
