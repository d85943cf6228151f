"""Standard Webhooks signing, and the worker that delivers the outbox to the teams."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import email.utils
import functools
import hashlib
import hmac
import json
import logging
import random
import time
from collections.abc import Sequence
from contextlib import AbstractContextManager
from typing import Any

import aiohttp
from yarl import URL

from ..platform import tracing
from ..platform.clock import Clock
from ..platform.metrics import Metrics
from ..platform.secretbox import SecretBox
from ..provider.proxies import Proxies
from ..store import Store, endpoints
from ..store.outbox import (
    Attempt,
    DueWebhook,
    claim_due_webhooks,
    next_due_in,
    record_attempt,
)
from .callbacks import CallbackPolicy, CallbackRefused

log = logging.getLogger("gateway.webhooks")

ATTEMPT_TIMEOUT = 15.0
IDLE_POLL = 5.0
# A claim outlives any attempt (and the time to record it); if its process dies mid-attempt,
# another process delivers the webhook once the claim lapses.
CLAIM_SECONDS = 60.0
MAX_BACKOFF = 30.0


def secret_key(secret: str) -> bytes:
    """The HMAC key inside a `whsec_` secret."""
    encoded = secret.removeprefix("whsec_")
    return base64.b64decode(encoded + "=" * (-len(encoded) % 4))


def sign(secret: str, webhook_id: str, timestamp: int, body: bytes) -> str:
    """`v1,` + base64 HMAC-SHA256 of `id.timestamp.body`, per the Standard Webhooks spec."""
    signed = f"{webhook_id}.{timestamp}.".encode() + body
    digest = hmac.new(secret_key(secret), signed, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def signed_headers(
    secret: str | Sequence[str], webhook_id: str, body: bytes, timestamp: int
) -> dict[str, str]:
    """The headers of one delivery attempt; with several secrets (a rotation's overlap), one
    signature each, space-separated, as the Standard Webhooks spec provides."""
    secrets = [secret] if isinstance(secret, str) else list(secret)
    return {
        "Content-Type": "application/json",
        "User-Agent": "sms-gateway-webhooks",
        "webhook-id": webhook_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": " ".join(sign(s, webhook_id, timestamp, body) for s in secrets),
    }


RESPONSE_KEPT = 1024  # bytes of an answer the attempt log keeps
JITTER = 0.1  # a retry waits up to this fraction longer than its step, so retries spread out
RETRY_AFTER_STATUSES = frozenset({429, 503})


def retry_after_seconds(value: str | None, now: float) -> float | None:
    """A Retry-After header's wait in seconds (delta-seconds or an HTTP-date), None if absent
    or unreadable."""
    if not value:
        return None
    value = value.strip()
    if value.isascii() and value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        return None
    return max(0.0, when.timestamp() - now)


def next_wait(
    schedule: Sequence[float], attempt: int, retry_after: float | None, jitter: float
) -> float | None:
    """Seconds until the next attempt after attempt number `attempt` (None: no more): the
    schedule's next step, or the receiver's Retry-After capped at twice that step, then up to
    JITTER longer (`jitter`, 0-1, picks how much)."""
    if attempt >= len(schedule):
        return None
    step = schedule[attempt]
    wait = step if retry_after is None else min(retry_after, 2 * step)
    return wait * (1 + JITTER * jitter)


class WebhookWorker:
    """Delivers due webhooks with bounded concurrency; retries on the configured schedule."""

    def __init__(
        self,
        store: Store,
        session: aiohttp.ClientSession,
        schedule: Sequence[float],
        clock: Clock,
        *,
        owner: str,
        guard: CallbackPolicy,
        proxies: Proxies | None = None,
        box: SecretBox | None = None,
        concurrency: int = 16,
        metrics: Metrics | None = None,
        operator_secret: str | None = None,
        operator_url: str | None = None,
        disable_after: float = 5 * 86400.0,
    ) -> None:
        self._owner = owner
        self._operator_secret = operator_secret
        self._operator_url = operator_url
        self._disable_after = disable_after
        self._guard = guard
        self._proxies = proxies or Proxies()
        self._box = box
        self._metrics = metrics
        self._store = store
        self._session = session
        self._schedule = tuple(schedule)
        self._clock = clock
        self._concurrency = concurrency
        self._wake = asyncio.Event()
        self._busy: dict[str, asyncio.Task[None]] = {}
        self._gather = max(1, concurrency // 4)  # free slots a backlog's next claim waits for
        self._backlog = False  # the last claim filled every free slot: more is due
        self._arrived = False  # wake() was called: new work, claim at once
        self._stopping = False
        self._runner: asyncio.Task[None] | None = None

    def wake(self) -> None:
        """Look at the queue now (something was queued)."""
        self._arrived = True
        self._wake.set()

    def start(self) -> None:
        """Run the delivery loop in the background."""
        self._runner = asyncio.get_running_loop().create_task(self._run())

    async def stop(self, grace: float = 5.0) -> None:
        """Stop taking work, give attempts in flight `grace` seconds, then cancel the rest.

        An attempt cut short is not recorded, so it is made again after the next start.
        """
        self._stopping = True
        self._wake.set()
        if self._runner is not None:
            await self._runner
        if self._busy:
            _, pending = await asyncio.wait(list(self._busy.values()), timeout=grace)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)

    async def _run(self) -> None:
        backoff = 0.0
        while not self._stopping:
            self._wake.clear()
            timeout: float | None
            try:
                timeout = await self._turn()
                backoff = 0.0
            except Exception as exc:  # a locked or busy database must not end delivery
                backoff = min(max(backoff * 2, 0.5), MAX_BACKOFF)
                log.warning(
                    "webhook worker: the queue cannot be read now (%s); retrying in %g s",
                    exc,
                    backoff,
                )
                timeout = backoff
            if self._stopping:
                break
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout)

    async def _turn(self) -> float | None:
        """Claim as many due webhooks as there are free slots; how long to sleep then. While
        every slot is busy it sleeps without a timeout and asks the database nothing: a
        finished attempt (a slot frees) or new work wakes it."""
        free = self._concurrency - len(self._busy)
        if free <= 0:
            return None
        if self._backlog and free < self._gather and not self._arrived:
            # More is due than the slots took: let a few more attempts end so that one claim
            # fills them together (a claim per freed slot is a transaction per webhook).
            return None
        self._arrived = False
        claimed = await claim_due_webhooks(self._store, self._owner, free, CLAIM_SECONDS)
        self._backlog = len(claimed) == free
        for hook in claimed:
            task = asyncio.get_running_loop().create_task(self._attempt(hook))
            self._busy[hook.id] = task
            task.add_done_callback(functools.partial(self._done, hook.id))
        if len(self._busy) >= self._concurrency:
            return None
        return await self._idle_time()

    def _done(self, hook_id: str, _task: asyncio.Task[None]) -> None:
        self._busy.pop(hook_id, None)
        self._wake.set()

    async def _idle_time(self) -> float:
        due_in = await next_due_in(self._store)  # by the database's clock
        if due_in is None:
            return IDLE_POLL
        return min(max(due_in, 0.01), IDLE_POLL)

    def _request(self, hook: DueWebhook) -> Any:
        timeout = aiohttp.ClientTimeout(total=ATTEMPT_TIMEOUT)
        url = URL(hook.url)
        via, extra_headers = self._proxies.request_options(url)
        if hook.kind == "dlr":  # the provider's own DLR format, for drop-in clients
            params = json.loads(hook.payload)
            sealed = params.pop("password_sealed", None)
            password = self._box.open(sealed, "client_dlr") if self._box and sealed else None
            params["password"] = params.get("password") or password or ""
            extra_headers = dict(extra_headers)
            tracing.inject(extra_headers)
            return self._session.get(
                url.extend_query(params),
                headers=extra_headers,
                allow_redirects=False,
                timeout=timeout,
                **via,
            )
        body = hook.payload.encode()
        secrets: Sequence[str] = (hook.secret,)
        if hook.kind == "operator":  # a usage alert to GATEWAY_OPERATOR_WEBHOOK_URL
            if not self._operator_secret:
                raise CallbackRefused("this replica has no GATEWAY_OPERATOR_WEBHOOK_SECRET")
            secrets = (self._operator_secret,)
        elif hook.endpoint_id is not None:
            secrets = self._endpoint_secrets(hook)
        headers = {**signed_headers(secrets, hook.id, body, int(time.time())), **extra_headers}
        tracing.inject(headers)  # the receiver continues the trace of the send
        return self._session.post(
            url, data=body, headers=headers, allow_redirects=False, timeout=timeout, **via
        )

    def _endpoint_secrets(self, hook: DueWebhook) -> tuple[str, ...]:
        """An endpoint's secrets, opened: its own, then the previous one during an overlap."""
        assert hook.endpoint_id is not None
        context = endpoints.seal_context(hook.endpoint_id)
        opened = [self._box.open(s, context) if self._box else None for s in hook.sealed_secrets]
        if not opened or opened[0] is None:
            raise CallbackRefused(
                "the endpoint's secret cannot be opened with this replica's GATEWAY_SECRET_KEY"
            )
        return tuple(s for s in opened if s is not None)

    async def _record(self, hook: DueWebhook, attempt: Attempt) -> bool:
        """Store the attempt, retrying while the claim lasts; whether it was stored."""
        delay, deadline = 0.2, time.monotonic() + CLAIM_SECONDS / 2
        while True:
            try:
                if hook.endpoint_id is not None:
                    return await endpoints.record_attempt(
                        self._store,
                        hook.id,
                        self._owner,
                        hook.endpoint_id,
                        attempt,
                        gone=attempt.http_status == 410,
                        disable_after=self._disable_after,
                        operator_url=self._operator_url,
                    )
                return await record_attempt(self._store, hook.id, self._owner, attempt)
            except Exception as exc:
                if time.monotonic() + delay > deadline:
                    log.warning("webhook %s: could not record its attempt: %s", hook.id, exc)
                    return False  # the claim lapses and the attempt is made again
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)

    async def _attempt(self, hook: DueWebhook) -> None:
        http_status: int | None = None
        error: str | None = None
        answer: bytes = b""
        retry_after: float | None = None
        refusal = self._guard.url_refusal(hook.url)  # names are checked by the resolver
        started = time.monotonic()
        with _span(hook) as current:
            try:
                if refusal is not None:
                    raise CallbackRefused(f"the URL {refusal}")
                async with self._request(hook) as resp:
                    http_status = resp.status
                    answer = await resp.content.read(64 * 1024)  # drain a little
                    if http_status in RETRY_AFTER_STATUSES:
                        retry_after = retry_after_seconds(
                            resp.headers.get("Retry-After"), time.time()
                        )
                if not 200 <= http_status < 300:
                    error = f"the receiver answered HTTP {http_status}"
            except TimeoutError:
                error = f"no answer within {ATTEMPT_TIMEOUT:g} s"
            except CallbackRefused as exc:
                error = f"refused: {exc}"
            except aiohttp.ClientConnectorError as exc:
                if isinstance(exc.os_error, CallbackRefused):
                    error = f"refused: {exc.os_error}"
                else:
                    error = f"could not reach the receiver: {type(exc).__name__}"
            except aiohttp.ClientError as exc:
                error = f"could not reach the receiver: {type(exc).__name__}"
            except ValueError as exc:  # an URL aiohttp cannot use
                error = f"unusable URL: {exc}"
            if current is not None:
                if http_status is not None:
                    current.set_attribute("http.response.status_code", http_status)
                if error is not None:
                    tracing.failed(current, error)
        number = hook.attempts + 1
        delivered = error is None
        retry_in = None  # delivered, or 410 Gone: the receiver asks for no more
        if not delivered and http_status != 410:
            retry_in = next_wait(self._schedule, number, retry_after, random.random())
        attempt = Attempt(
            number,
            self._clock(),
            delivered,
            http_status,
            error,
            retry_in,
            round((time.monotonic() - started) * 1000),
            answer[:RESPONSE_KEPT].decode("utf-8", errors="replace") if http_status else None,
        )
        if not delivered:
            log.info("webhook %s attempt %d failed: %s", hook.id, number, error)
        if not await self._record(hook, attempt):
            return
        if self._metrics is not None:  # counted once stored, so a scrape agrees with the table
            result = "delivered" if delivered else ("retry" if retry_in is not None else "failed")
            self._metrics.webhook_attempts.labels(result).inc()


def _span(hook: DueWebhook) -> AbstractContextManager[Any]:
    """The attempt's span, a child of the send that caused it (its stored traceparent)."""
    if not tracing.active():
        return tracing.NOOP
    method = "POST" if hook.kind == "webhook" else "GET"
    attributes = {
        "http.request.method": method,
        "server.address": URL(hook.url).host or "",
        "gateway.webhook.id": hook.id,
        "gateway.webhook.attempt": hook.attempts + 1,
    }
    return tracing.span(f"webhook {method}", "client", attributes, parent=hook.trace)
