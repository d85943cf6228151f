"""This process's lease: an identity and a heartbeat in the database, and the sweep that moves
what a dead process left in flight to `unknown`."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
import uuid
from collections.abc import Callable
from pathlib import Path

from ..store import Store
from ..store import leases as store_leases
from .clock import iso, parse_iso, utcnow

log = logging.getLogger("gateway.leases")


def host_key() -> str:
    """Where a pid names one process: host name, boot and pid namespace; '' if unknowable."""
    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
        namespace = os.stat("/proc/self/ns/pid").st_ino
    except OSError:
        return ""
    return f"{socket.gethostname()}/{boot}/{namespace}"


def pid_alive(pid: int) -> bool:
    """Whether a process with this pid runs here (a zombie does not count)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True  # no /proc to look in: it exists
    return stat.rpartition(")")[2].split()[:1] != ["Z"]


WARN_EVERY = 600.0  # seconds between warnings while the offset stays past the limit


class ClockOffset:
    """How far this process's clock is from the database's, measured at every renewal.

    Nothing the gateway decides rests on it (every shared time is read in the database's own
    SQL); it is there so an operator sees a drifting host before it confuses anyone reading
    logs and timelines: exported, warned about past `warn_after` seconds, and not ready past
    10 times that.
    """

    def __init__(self, warn_after: float, on_change: Callable[[float], None] | None = None) -> None:
        self.warn_after = warn_after
        self.seconds = 0.0  # the database's clock minus this process's
        self.measured = False
        self._on_change = on_change
        self._warned_at: float | None = None

    @property
    def unready(self) -> bool:
        """Whether the offset is past ten times the limit (`/readyz` says not ready)."""
        return self.measured and abs(self.seconds) > 10 * self.warn_after

    def note(self, database_time: str, sent: float, received: float) -> None:
        """A reading: the database's time, taken between `sent` and `received` (this
        process's wall clock, as epoch seconds); the midpoint is compared with it."""
        self.seconds = parse_iso(database_time).timestamp() - (sent + received) / 2
        self.measured = True
        if self._on_change is not None:
            self._on_change(self.seconds)
        if abs(self.seconds) <= self.warn_after:
            if self._warned_at is not None:
                log.info("this host's clock is back within %g s of the database's", self.warn_after)
            self._warned_at = None
            return
        now = time.monotonic()
        if self._warned_at is None or now - self._warned_at >= WARN_EVERY:
            self._warned_at = now
            log.warning(
                "this host's clock is %+.3f s from the database's (more than "
                "GATEWAY_MAX_CLOCK_OFFSET=%g s): fix its time sync; the gateway's rules use the "
                "database's clock, but logs and timelines stamped here will disagree",
                -self.seconds,
                self.warn_after,
            )


class Lease:
    """Holds this process's lease while it runs, and sweeps lapsed ones.

    Every time in a lease is the database's: heartbeats are stamped and compared by its clock,
    so hosts whose clocks disagree agree on who is alive. A process on the same host whose pid
    is gone is dead at once; any other is taken for dead once it missed a whole lease of
    renewals while the sweeper kept renewing (store/leases.py).
    """

    def __init__(
        self,
        store: Store,
        seconds: float,
        answer_for: store_leases.AnswerFor,
        offset: ClockOffset | None = None,
    ) -> None:
        # (not a ULID: the id generator is monotonic, and a test clock may run in the past)
        self.id = "prc_" + uuid.uuid4().hex
        self.seconds = seconds
        self.offset = offset or ClockOffset(2.0)
        self._store = store
        self._answer_for = answer_for
        self._host = host_key()
        self._beats: asyncio.Task[None] | None = None

    @property
    def interval(self) -> float:
        """Seconds between heartbeats: several per lease, so one slow write does not lapse it."""
        return self.seconds / 6

    async def start(self) -> None:
        """Take the lease, sweep what dead processes left, and keep the lease alive."""
        await self._register()
        await self.sweep()
        self._beats = asyncio.get_running_loop().create_task(self._beat())

    async def stop(self) -> None:
        """Stop the heartbeat and give the lease up (what is still in flight is swept)."""
        if self._beats is not None:
            self._beats.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._beats
        try:
            await store_leases.unregister(self._store, self.id)
        except Exception as exc:  # the lease lapses by itself
            log.warning("could not give the lease up: %s", exc)

    async def sweep(self) -> store_leases.Swept:
        """Sweep lapsed leases and pids that are gone; what was swept."""
        dead = []
        if self._host:
            dead = [
                p.id
                for p in await store_leases.processes(self._store)
                if p.id != self.id and p.host == self._host and not pid_alive(p.pid)
            ]
        swept = await store_leases.sweep(
            self._store, self.id, self.seconds, dead, iso(utcnow()), self._answer_for
        )
        if swept.messages or swept.keys:
            log.warning(
                "swept %d message(s) and %d Idempotency-Key(s) left in flight by %d stopped "
                "process(es): the messages are now 'unknown'",
                swept.messages,
                swept.keys,
                swept.processes,
            )
        return swept

    async def _register(self) -> None:
        sent = time.time()
        at = await store_leases.register(self._store, self.id, self._host, os.getpid())
        self.offset.note(at, sent, time.time())

    async def renew(self) -> None:
        """One heartbeat (taking the lease again if others took this process for dead)."""
        sent = time.time()
        at = await store_leases.heartbeat(self._store, self.id, self.seconds)
        if at is None:
            log.warning("this process's lease had lapsed; taking it again")
            await self._register()
        else:
            self.offset.note(at, sent, time.time())

    async def _beat(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            try:
                await self.renew()
                await self.sweep()
            except Exception as exc:  # a busy database: the next beat tries again
                log.warning("lease heartbeat failed: %s", exc)
