"""Prometheus metrics: one registry per app, so tests and apps never share counters."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable

from aiohttp import web
from aiohttp.typedefs import Middleware
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)


class Metrics:
    """Every metric the gateway exports."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "gateway_http_requests",
            "HTTP requests answered",
            ["route", "method", "status"],
            registry=r,
        )
        self.latency = Histogram(
            "gateway_http_request_duration_seconds",
            "Time to answer a request",
            ["route", "method"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.messages = Counter(
            "gateway_messages",
            "Messages that reached a status after sending",
            ["status"],
            registry=r,
        )
        self.provider_latency = Histogram(
            "gateway_provider_request_duration_seconds",
            "Time of one provider call",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.provider_errors = Counter(
            "gateway_provider_errors",
            "Provider calls that failed, by kind",
            ["kind"],
            registry=r,
        )
        self.quota_rejections = Counter(
            "gateway_quota_rejections",
            "Sends refused by a quota",
            ["team", "quota"],
            registry=r,
        )
        self.rate_limited = Counter(
            "gateway_rate_limited",
            "Requests refused by a team's rate limit",
            ["team"],
            registry=r,
        )
        self.webhook_backlog = Gauge(
            "gateway_webhook_backlog",
            "Webhooks waiting to be delivered",
            registry=r,
        )
        self.webhooks_failed_now = Gauge(
            "gateway_webhooks_failed",
            "Webhooks that gave up (until an admin retries)",
            registry=r,
        )
        self.webhook_attempts = Counter(
            "gateway_webhook_attempts",
            "Webhook delivery attempts",
            ["result"],
            registry=r,
        )
        self.dlrs = Counter(
            "gateway_dlr_received",
            "Delivery reports received",
            ["status", "outcome"],
            registry=r,
        )


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def metrics_middleware(metrics: Metrics) -> Middleware:
    """Count and time every request by route template (never by raw path)."""

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        started = time.perf_counter()
        status = 500
        try:
            response = await handler(request)
            status = response.status
            return response
        finally:
            route = request.match_info.route.resource
            name = route.canonical if route is not None else "unmatched"
            metrics.requests.labels(name, request.method, str(status)).inc()
            metrics.latency.labels(name, request.method).observe(time.perf_counter() - started)

    return middleware
