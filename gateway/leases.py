"""This process's lease: an identity and a heartbeat in the database, and the sweep that moves
what a dead process left in flight to `unknown`."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import uuid
from datetime import timedelta
from pathlib import Path

from .clock import iso, utcnow
from .store import Store
from .store import leases as store_leases

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


class Lease:
    """Holds this process's lease while it runs, and sweeps lapsed ones.

    Leases use the wall clock, not the app's clock: they are about which processes are alive
    now. A process on the same host whose pid is gone is dead at once; any other is taken for
    dead once `seconds` pass without a heartbeat.
    """

    def __init__(self, store: Store, seconds: float, answer_for: store_leases.AnswerFor) -> None:
        # (not a ULID: the id generator is monotonic, and a test clock may run in the past)
        self.id = "prc_" + uuid.uuid4().hex
        self.seconds = seconds
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
        await store_leases.register(self._store, self.id, self._host, os.getpid(), iso(utcnow()))
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
        now = utcnow()
        swept = await store_leases.sweep(
            self._store,
            self.id,
            iso(now - timedelta(seconds=self.seconds)),
            dead,
            iso(now),
            self._answer_for,
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

    async def _beat(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            try:
                if not await store_leases.heartbeat(self._store, self.id, iso(utcnow())):
                    log.warning("this process's lease had lapsed; taking it again")
                    await store_leases.register(
                        self._store, self.id, self._host, os.getpid(), iso(utcnow())
                    )
                await self.sweep()
            except Exception as exc:  # a busy database: the next beat tries again
                log.warning("lease heartbeat failed: %s", exc)
