"""The dispatcher: sends queued and scheduled messages when they are due, paced to the
provider's rate across every process, and ends what waited too long or was canceled.

Ownership is the leases': a due message is claimed (`queued` → `sending` under this process's
lease) in the write right before its provider call, so from the claim on it settles exactly as
a direct send does, and if this process dies mid-call the sweep moves it to `unknown`. A call
the provider certainly did not take puts its messages back (`queued`, with backoff); one it
may have taken never goes out again.

Pacing (GATEWAY_PROVIDER_MAX_RATE): one process at a time is the dispatcher, named in the
database (`dispatcher`, a claim renewed every second and lapsing after a few). It plans its
calls 1/rate seconds apart and never starts one within a second of the real start of the
call `rate` calls back (`_window_turn`), by its own monotonic clock: no second holds more
queued calls than the rate, and a late start does not slow the rest. The others only take
over when it stops or dies (after waiting a second, so the pace holds across the handover).
Without a rate every process dispatches. Direct sends never wait for the queue: the rate is
the queue's alone."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import random
import time
from collections import deque
from collections.abc import Sequence
from contextlib import AbstractContextManager
from typing import Any

from ..delivery.notify import queue_webhook
from ..platform import logs, tracing
from ..platform.clock import iso
from ..store import queue as store_queue
from ..store.db import Row, Tx
from ..store.messages import Batch, NewMessage
from ..store.settle import Outcome
from . import settlement
from .workflow import SendContext, suppressed, suppressed_outcomes

log = logging.getLogger("gateway.dispatch")


POLL_SECONDS = 1.0  # how often the queue is looked at without a wake-up (other replicas, send_at)


CONCURRENCY = 4  # queued provider calls in flight per process


BACKOFF_CAP = 30.0  # seconds: messages go out within a minute of the provider coming back


LEAD_RENEW = 1.0  # seconds between renewals of the dispatcher's role while it works


CONTENDED_SECONDS = 0.02  # a look found work that another process claimed first: look again soon


# The calls of any `rate` in a row span at least a second and this much more, measured from
# their real starts (requests jitter on their way to the provider).
WINDOW_MARGIN = 0.04


def backoff(attempts: int) -> float:
    """Seconds to wait before trying a call again after `attempts` certain refusals."""
    base = min(BACKOFF_CAP, 2.0 ** max(0, attempts - 1))
    return base * random.uniform(0.8, 1.0)


def _batch(rows: Sequence[Row]) -> Batch:
    """The claimed messages of one batch, as the settlement takes them."""
    first = rows[0]
    return Batch(
        batch_id=first["batch_id"],
        team_id=first["team_id"],
        text=first["text"],
        sender=first["sender"],
        reference=first["reference"],
        callback_url=first["callback_url"],
        encoding=first["encoding"],
        day=first["day"],
        month=first["month"],
        created_at=first["created_at"],
        messages=[
            NewMessage(r["id"], r["recipient"], r["charged_segments"], r["cost"]) for r in rows
        ],
        status="queued",
        metadata=first["metadata"],
        purpose=first["purpose"],
    )


def _span(rows: Sequence[Row]) -> AbstractContextManager[Any]:
    """A queued batch's call and settlement, continuing the trace of the request that queued
    it (its stored traceparent)."""
    if not tracing.active():
        return tracing.NOOP
    attributes = {"gateway.batch_id": rows[0]["batch_id"], "gateway.messages": len(rows)}
    return tracing.span("dispatch batch", attributes=attributes, parent=rows[0]["trace"])


async def end_waiting(
    tx: Tx, rows: Sequence[Row], status: str, at: str, code: str, detail: str, delay: float
) -> tuple[list[dict[str, Any]], int]:
    """End waiting messages unsent (`expired` or `canceled`), refunded, with their webhooks
    queued in the same transaction; the messages changed and the webhooks queued."""
    ended = await store_queue.end_unsent(tx, rows, status, at, code, detail)
    callback = {r["id"]: (r["team_id"], r["callback_url"]) for r in rows}
    team_urls: dict[str, str | None] = {}
    queued = 0
    for message in ended:
        team_id, url = callback[message["id"]]
        queued += await queue_webhook(tx, team_id, message, url, at, delay, team_urls)
    return ended, queued


EXPIRED_DETAIL = "the message was not sent before its validity period ended; it is refunded"


async def _expire(tx: Tx, now: str, delay: float) -> tuple[list[dict[str, Any]], int]:
    rows = await store_queue.expiring(tx)
    return await end_waiting(tx, rows, "expired", now, "expired", EXPIRED_DETAIL, delay)


class Dispatcher:
    """Sends this process's share of the queue until stopped."""

    def __init__(self, ctx: SendContext) -> None:
        self._ctx = ctx
        rate = ctx.settings.provider_max_rate
        self._interval = 1 / rate if rate else 0.0
        # the real starts of the last floor(rate) calls: the next may not start within a second
        # of the first of them
        self._window: deque[float] = deque(maxlen=max(1, math.floor(rate or 1)))
        self._wake = asyncio.Event()
        self._stopping = False
        self._gate = asyncio.Semaphore(CONCURRENCY)
        self._calls: set[asyncio.Task[None]] = set()
        self._paused_until = 0.0  # monotonic: the provider refused; wait before the next call
        self._task: asyncio.Task[None] | None = None
        self._leading = False  # this process is the dispatcher (with a rate)
        self._led_at = -LEAD_RENEW  # monotonic: the role's last renewal
        self._next_slot = 0.0  # monotonic: the planned start of the next queued call
        self._lead_seconds = max(5.0, 2 * self._interval + 2)
        self._expired_at = -1.0  # monotonic: the last look for expired messages

    def start(self) -> None:
        """Run in the background."""
        self._task = asyncio.get_running_loop().create_task(self._run())

    def wake(self) -> None:
        """Something was queued here: look now rather than at the next poll."""
        self._wake.set()

    async def stop(self, grace: float) -> None:
        """Claim nothing more; give calls in flight `grace` seconds to finish and settle (what
        is still in flight then is left to the lease's sweep, as `unknown`)."""
        self._stopping = True
        self._wake.set()
        if self._task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._calls:
            _, pending = await asyncio.wait(list(self._calls), timeout=grace)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
        if self._leading:
            try:
                await store_queue.resign(self._ctx.store, self._ctx.owner)
            except Exception as exc:  # it lapses by itself
                log.warning("could not hand the dispatcher's role over: %s", exc)

    async def _lead(self) -> bool:
        """Whether this process is the dispatcher (taking or renewing the role as needed)."""
        now = time.monotonic()
        if self._leading and now - self._led_at < LEAD_RENEW:
            return True
        ctx = self._ctx
        held = self._leading and now - self._led_at < self._lead_seconds  # never lapsed since
        leading = await store_queue.lead(ctx.store, ctx.owner, self._lead_seconds)
        if leading and not held:
            # whoever dispatched before may have just made a call: the first one waits a second
            self._next_slot = time.monotonic() + 1.0
            self._window.clear()
            log.info("this process now dispatches the queue")
        self._leading, self._led_at = leading, now
        return leading

    async def _sleep(self, seconds: float) -> None:
        """Sleep, waking early for a new queued send (since the last look) or a stop."""
        if seconds > 0 and not self._stopping:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), seconds)

    async def _run(self) -> None:
        failures = 0
        while not self._stopping:
            self._wake.clear()
            try:
                wait = await self._dispatch()
                failures = 0
            except Exception as exc:  # a busy or lost database: try again shortly
                failures += 1
                wait = min(BACKOFF_CAP, 0.5 * 2**failures)
                log.warning("dispatcher: %s; trying again in %.1f s", exc, wait)
            await self._sleep(wait)

    async def expire(self) -> int:
        """End every waiting message whose validity is over; how many."""
        ctx = self._ctx
        now = iso(ctx.clock())  # (the timeline's stamp; the database's clock decides)
        if not await store_queue.any_expiring(ctx.store):
            return 0
        ended, webhooks = await ctx.store.write(
            _expire, now, ctx.settings.webhook_retry_schedule[0]
        )
        if ended:
            ctx.metrics.messages.labels("expired").inc(len(ended))
            logs.note("queued messages expired", messages=len(ended))
        if webhooks:
            ctx.webhooks_queued()
        return len(ended)

    async def _dispatch(self) -> float:
        """Send due messages while there are any; the seconds until the queue needs a look."""
        ctx = self._ctx
        while not self._stopping:
            if time.monotonic() - self._expired_at >= POLL_SECONDS:
                await self.expire()
                self._expired_at = time.monotonic()
            pause = self._paused_until - time.monotonic()
            if pause > 0:
                return pause
            due_in = await store_queue.next_attempt(ctx.store)  # by the database's clock
            if due_in is None:
                return POLL_SECONDS
            if due_in > 0:
                return min(POLL_SECONDS, due_in)
            # (the role is a write: taken and renewed only while there is work for it)
            if self._interval and not await self._lead():
                return POLL_SECONDS
            await self._gate.acquire()
            if self._stopping:  # (waited for a free slot while the process began to stop)
                self._gate.release()
                break
            try:
                rows = await ctx.store.write(
                    store_queue.claim_due,
                    ctx.owner,
                    iso(ctx.clock()),
                    ctx.settings.provider_batch_size,
                    bool(self._interval),
                )
                if rows and self._interval:
                    await self._planned_start()
            except BaseException:
                self._gate.release()
                raise
            if not rows:  # another process took them first (or they expired meanwhile)
                self._gate.release()
                return CONTENDED_SECONDS
            task = asyncio.get_running_loop().create_task(self._send(rows))
            self._calls.add(task)
            task.add_done_callback(self._calls.discard)
        return 0.0

    async def _planned_start(self) -> None:
        """Wait for the next call's planned start: 1/rate after the previous one's plan (a late
        start does not move the plan, so it does not slow the rest)."""
        now = time.monotonic()
        start = max(now, self._next_slot)
        if start > now:
            await asyncio.sleep(start - now)
        self._next_slot = start + self._interval

    async def _window_turn(self) -> None:
        """Right before a call goes out: never within a second (and a margin) of the real start
        of the call `rate` calls back, so no second holds more than `rate` calls however late
        some of them started. Checked and noted with nothing in between (no await), in the
        task that makes the call, so the time noted is when the request is written."""
        while len(self._window) == self._window.maxlen:
            wait = self._window[0] + 1.0 + WINDOW_MARGIN - time.monotonic()
            if wait <= 0:
                break
            await asyncio.sleep(wait)
        self._window.append(time.monotonic())

    async def _send(self, rows: list[Row]) -> None:
        try:
            with _span(rows):
                await self._call_and_settle(rows)
        except Exception:
            log.exception("dispatcher: batch %s failed after its claim", rows[0]["batch_id"])
        finally:
            self._gate.release()

    async def _call_and_settle(self, rows: list[Row]) -> None:
        ctx = self._ctx
        batch = _batch(rows)
        try:
            dlrurl = f"{ctx.settings.public_url}/dlr/{ctx.tokens.sign(batch.batch_id)}"
            # looked up now, when it is sent: a number suppressed since the send was queued
            # is not texted
            blocked = await suppressed(ctx.store, batch)
        except Exception:
            log.exception("dispatcher: batch %s could not be prepared", batch.batch_id)
            await self._requeue(rows, 1.0, "gateway_error", "the gateway failed before the call")
            return
        held = suppressed_outcomes(batch.messages, blocked, iso(ctx.clock()))
        sendable = [m for m in batch.messages if m.recipient not in blocked]
        if not sendable:
            await self._settle(batch, held)
            return
        if self._interval:
            await self._window_turn()
        try:
            result = await ctx.provider.send(
                [m.recipient for m in sendable],
                batch.text,
                sender=batch.sender or ctx.settings.provider_sender,
                dlrurl=dlrurl,
            )
        except Exception:  # handed over: the provider may have acted
            log.exception("dispatcher: batch %s failed around the provider call", batch.batch_id)
            at = iso(ctx.clock())
            detail = "the gateway failed after handing the send to the provider"
            outcomes = [settlement.unknown(m, at, "gateway_error", detail) for m in sendable]
        else:
            if result.failure == "unavailable":
                attempts = 1 + max(int(r["attempts"]) for r in rows)
                delay = backoff(attempts)
                self._paused_until = max(self._paused_until, time.monotonic() + delay)
                ctx.metrics.queue_retries.inc()
                await self._requeue(
                    rows, delay, "provider_unavailable", result.detail or "the provider is busy"
                )
                return
            at = iso(ctx.clock())
            outcomes = [settlement.outcome(m, result, at) for m in sendable]
        ctx.metrics.queue_calls.inc()
        await self._settle(batch, held + outcomes)

    async def _settle(self, batch: Batch, outcomes: list[Outcome]) -> None:
        """Store a claimed batch's outcomes (when the database cannot take them now, later)."""
        ctx = self._ctx
        delay = ctx.settings.webhook_retry_schedule[0]

        async def write() -> None:
            settled = await settlement.settle(
                ctx.store, ctx.owner, batch, outcomes, webhook_delay=delay
            )
            if settled.webhooks_queued:
                ctx.webhooks_queued()
            for o in outcomes:
                ctx.metrics.messages.labels(o.status).inc()

        try:
            await write()
        except Exception as exc:  # the rows stay `sending` under this lease meanwhile
            log.warning("batch %s: %s; its outcome is stored when it can be", batch.batch_id, exc)
            ctx.catch_up.add(write, f"the outcome of queued batch {batch.batch_id}", batch.batch_id)
        logs.note(
            "queued batch sent",
            batch_id=batch.batch_id,
            team=batch.team_id,
            recipients=len(batch.messages),
            outcome=",".join(sorted({o.status for o in outcomes})),
        )

    async def _requeue(self, rows: list[Row], delay: float, code: str, detail: str) -> None:
        ctx = self._ctx

        async def write() -> None:
            await ctx.store.write(store_queue.requeue, ctx.owner, rows, delay, code, detail)

        try:
            await write()
        except Exception as exc:
            log.warning("could not put batch %s back yet: %s", rows[0]["batch_id"], exc)
            batch_id = rows[0]["batch_id"]
            ctx.catch_up.add(write, f"the return of batch {batch_id} to the queue", batch_id)
        log.info(
            "provider did not take queued batch %s (%s); trying again in %.1f s",
            rows[0]["batch_id"],
            detail,
            delay,
        )
