"""create_app(settings): the one composition root."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import replace
from datetime import timedelta
from importlib import resources
from zoneinfo import ZoneInfo

import aiohttp
from aiohttp import web
from aiohttp.typedefs import Middleware
from yarl import URL

from .dashboard import setup_dashboard
from .delivery.callbacks import GuardedResolver
from .delivery.dlrtoken import DlrTokens
from .delivery.reports import Report, receive_report
from .delivery.webhooks import WebhookWorker
from .errors import problem_for
from .keys import (
    AUTH,
    CLOCK,
    HTTP,
    METRICS,
    OFFSET,
    OPENAPI,
    PROXIES,
    RATES,
    SEND,
    SETTINGS,
    STORE,
    TEAMS,
    TIMEZONE,
    WORKER,
)
from .platform import refusals, tracing
from .platform.clock import Clock, iso, utcnow
from .platform.ids import lowest_ulid
from .platform.leases import ClockOffset, Lease
from .platform.logs import (
    REQUEST_FIELDS,
    REQUEST_ID_HEADER,
    quiet_parser_errors,
    request_fields,
    request_id,
    request_id_for,
)
from .platform.metrics import Metrics
from .platform.secretbox import open_box
from .platform.settings import Settings
from .provider.client import ProviderClient
from .provider.proxies import Proxies
from .provider.sandbox import Deliver, Simulator, test_simulator
from .provider.transport import Upstream
from .routes import setup_routes
from .sending.answers import swept_answer
from .sending.catchup import CatchUp
from .sending.dispatch import Dispatcher
from .sending.validation import callback_guard, refuse_unstorable
from .sending.workflow import IDEMPOTENCY_TTL, SendContext
from .store import make_store
from .store.keys import forget_expired_keys
from .store.retention import delete_older_than
from .store.teams import TeamCache
from .teams.auth import Authenticator
from .teams.ratelimit import RateLimiter

log = logging.getLogger("gateway")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
MAX_BODY_BYTES = 256 * 1024
PROVIDER_CONNECTIONS = 100


def create_app(
    settings: Settings, *, clock: Clock = utcnow, proxies: Proxies | None = None
) -> web.Application:
    """Build the gateway application; resources open when it starts and close when it stops.
    `proxies`: the outgoing proxies `serve` read at start (by default, read here)."""
    metrics = Metrics()
    quiet_parser_errors()
    refusals.install()
    edge = _edge_middleware(metrics)
    app = web.Application(
        middlewares=[tracing.middleware, edge] if settings.tracing else [edge],
        client_max_size=MAX_BODY_BYTES,
    )
    app[METRICS] = metrics
    app[RATES] = RateLimiter()
    app[TEAMS] = TeamCache()
    app[SETTINGS] = settings
    app[CLOCK] = clock
    app[PROXIES] = proxies if proxies is not None else Proxies.from_environment()
    app[TIMEZONE] = ZoneInfo(settings.timezone)
    app[OPENAPI] = resources.files("gateway").joinpath("openapi.yaml").read_bytes()
    app.on_response_prepare.append(refusals.name_no_version)
    app.cleanup_ctx.append(_resources)
    setup_routes(app)
    setup_dashboard(app)
    return app


def _edge_middleware(metrics: Metrics) -> Middleware:
    """What every request gets: a request id to log under and echo back, problem+json for any
    failure, and its count and time in the metrics. One middleware, not three: each layer is
    another coroutine on every request."""

    @web.middleware
    async def edge(request: web.Request, handler: Handler) -> web.StreamResponse:
        started = time.perf_counter()
        rid = request_id_for(request)
        token = request_id.set(rid)
        fields: dict[str, object] = {}
        request[REQUEST_FIELDS] = fields
        request_fields.set(fields)
        status = 500
        try:
            try:
                if ("\x00" in request.raw_path or "%00" in request.raw_path) and not (
                    request.raw_path.startswith("/dlr/")  # the provider's: cleaned, not refused
                ):
                    _refuse_nul(request)
                response: web.StreamResponse = await handler(request)
            except Exception as exc:
                status = getattr(exc, "status", 500)
                response = problem_for(request, exc)
            status = response.status
        finally:
            request_id.reset(token)
            metrics.observe_request(request, status, time.perf_counter() - started)
        response.headers[REQUEST_ID_HEADER] = rid
        return response

    return edge


def _refuse_nul(request: web.Request) -> None:
    """A NUL in the path or the query is a 422 naming where (the databases cannot store it, and
    no id or filter holds one)."""
    where = []
    if "\x00" in request.path:
        where.append("path")
    for key, value in request.query.items():
        if "\x00" in key or "\x00" in value:
            where.append(key.replace("\x00", "") or "query")
    refuse_unstorable(where or ["query"])


async def _resources(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS]
    if settings.tracing:
        tracing.start()
    store = make_store(settings.database, busy_timeout=settings.database_busy_timeout)
    await store.open()
    app[STORE] = store
    offset = ClockOffset(settings.max_clock_offset, app[METRICS].clock_offset.set)
    app[OFFSET] = offset
    lease = Lease(store, settings.lease_seconds, swept_answer, offset)
    await lease.start()
    proxies = app[PROXIES]
    http = aiohttp.ClientSession(  # the JWKS fetch: rare, so the proxy is looked up each time
        connector=aiohttp.TCPConnector(limit=100),
        headers={"User-Agent": "sms-gateway"},
        trust_env=True,
    )
    app[HTTP] = http
    app[AUTH] = Authenticator(settings, http)
    simulator: Simulator | None = None
    provider_url = settings.provider_url
    if settings.sandbox:
        assert settings.provider_username and settings.provider_password
        assert settings.provider_api_key
        simulator = Simulator(
            settings.provider_username,
            settings.provider_password,
            settings.provider_api_key,
            settings.sandbox_dlr_delay,
        )
        await simulator.start()
        provider_url = simulator.url
        log.info("sandbox: simulated provider at %s", provider_url)
    upstream = Upstream(
        provider_url,
        limit=PROVIDER_CONNECTIONS,
        proxy=None if simulator is not None else proxies.for_url(URL(provider_url)),
    )
    provider = ProviderClient(
        upstream,
        api_key=settings.provider_api_key or "",
        username=settings.provider_username or "",
        password=settings.provider_password or "",
        timeout=settings.provider_timeout,
        metrics=app[METRICS],
    )
    tokens = DlrTokens(await store.secret("dlr_token_key"))
    tester = test_simulator(settings.sandbox_dlr_delay, _test_reports(app, tokens))
    await tester.start()
    test_upstream = Upstream(tester.url, limit=PROVIDER_CONNECTIONS, proxy=None)
    test_provider = ProviderClient(
        test_upstream,
        api_key=tester.api_key,
        username=tester.username,
        password=tester.password,
        timeout=settings.provider_timeout,
    )
    guard = callback_guard(settings)
    webhook_http = aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(
            limit=50, resolver=GuardedResolver(guard, trusted=proxies.hosts())
        ),
        headers={"User-Agent": "sms-gateway-webhooks"},
    )
    box = await open_box(store, settings)
    worker = WebhookWorker(
        store,
        webhook_http,
        settings.webhook_retry_schedule,
        app[CLOCK],
        owner=lease.id,
        guard=guard,
        proxies=proxies,
        box=box,
        metrics=app[METRICS],
        operator_secret=settings.operator_webhook_secret,
        operator_url=settings.operator_webhook_url,
        disable_after=settings.webhook_disable_after,
    )
    app[WORKER] = worker
    catch_up = CatchUp(store, lease.id, swept_answer)
    send_context = SendContext(
        settings=settings,
        store=store,
        provider=provider,
        tokens=tokens,
        clock=app[CLOCK],
        tz=app[TIMEZONE],
        owner=lease.id,
        catch_up=catch_up,
        box=box,
        webhooks_queued=worker.wake,
        metrics=app[METRICS],
        test_provider=test_provider,
    )
    dispatcher = Dispatcher(send_context)
    app[SEND] = replace(send_context, queue_accepted=dispatcher.wake)
    worker.start()
    dispatcher.start()
    housekeeping = asyncio.get_running_loop().create_task(_housekeeping(app))
    try:
        yield
    finally:
        housekeeping.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await housekeeping
        await dispatcher.stop(grace=settings.provider_timeout)
        await catch_up.stop()
        await worker.stop()
        await lease.stop()
        await webhook_http.close()
        if simulator is not None:
            await simulator.stop()
        await tester.stop()
        await test_upstream.close()
        await http.close()
        await upstream.close()
        await store.close()
        if settings.tracing:
            tracing.stop()


def _test_reports(app: web.Application, tokens: DlrTokens) -> Deliver:
    """How a test send's simulated delivery reports are taken: straight into the store, as
    GET /dlr/{token} would take them (the process need not reach its own public URL)."""

    async def deliver(dlrurl: str, recipient: str, message_id: str, state: str) -> None:
        batch_id = tokens.verify(dlrurl.rpartition("/dlr/")[2])
        if batch_id is None:
            return
        report = Report(batch_id, message_id, recipient, state)
        delay = app[SETTINGS].webhook_retry_schedule[0]
        if await receive_report(app[STORE], report, iso(app[CLOCK]()), delay) == "applied":
            app[WORKER].wake()

    return deliver


async def _housekeeping(app: web.Application) -> None:
    """Hourly: forget Idempotency-Keys older than 24 hours, and with GATEWAY_RETENTION_DAYS,
    delete older messages, webhook deliveries and delivery reports."""
    while True:
        now = app[CLOCK]()
        try:
            await forget_expired_keys(app[STORE], IDEMPOTENCY_TTL.total_seconds())
            days = app[SETTINGS].retention_days
            if days is not None:
                cutoff = now - timedelta(days=days)
                deleted = await delete_older_than(
                    app[STORE], "msg_" + lowest_ulid(cutoff), iso(cutoff)
                )
                if any(deleted.values()):
                    log.info("retention: deleted %s older than %d days", deleted, days)
        except Exception:  # a busy database must not end the loop
            log.exception("housekeeping failed")
        await asyncio.sleep(3600)
