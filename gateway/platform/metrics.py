"""Prometheus metrics: one registry per app, so tests and apps never share counters."""

from __future__ import annotations

from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)


class Metrics:
    """Every metric the gateway exports."""

    def __init__(self) -> None:
        self._request_children: dict[tuple[str, str, int], tuple[Counter, Histogram]] = {}
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
        self.clock_offset = Gauge(
            "gateway_clock_offset_seconds",
            "The database's clock minus this process's, measured at every lease renewal",
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
        self.queue_depth = Gauge(
            "gateway_queue_depth",
            "Queued and scheduled messages waiting to be sent, by status",
            ["status"],
            registry=r,
        )
        self.queue_oldest_due_age = Gauge(
            "gateway_queue_oldest_due_age_seconds",
            "How long the oldest due queued message has waited past its due time (0: none)",
            registry=r,
        )
        self.queue_calls = Counter(
            "gateway_queue_provider_calls",
            "Provider calls made for queued messages (their rate is the dispatch rate)",
            registry=r,
        )
        self.queue_retries = Counter(
            "gateway_queue_retries",
            "Queued provider calls the provider certainly did not take, to be tried again",
            registry=r,
        )
        self.dlrs = Counter(
            "gateway_dlr_received",
            "Delivery reports received",
            ["status", "outcome"],
            registry=r,
        )

    def observe_request(self, request: web.Request, status: int, seconds: float) -> None:
        """Count and time one answered request by route template (never by raw path)."""
        route = request.match_info.route.resource
        name = route.canonical if route is not None else "unmatched"
        key = (name, request.method, status)
        children = self._request_children.get(key)
        if children is None:  # the label lookups are done once per route, method and status
            children = (
                self.requests.labels(name, request.method, str(status)),
                self.latency.labels(name, request.method),
            )
            self._request_children[key] = children
        children[0].inc()
        children[1].observe(seconds)
