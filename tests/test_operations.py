"""Operator-facing behaviour: metrics, readiness, request ids, structured logs, rate limits."""

from __future__ import annotations

import asyncio
import io
import json
import logging
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from prometheus_client.parser import text_string_to_metric_families

from gateway.keys import STORE
from gateway.platform.logs import REDACTED, JsonFormatter, Redactor, configure, flush
from gateway.teams.ratelimit import RateLimiter, retry_after

from .conftest import (
    API_KEY,
    JWT_SECRET,
    PASSWORD,
    ClientFactory,
    FakeProvider,
    Receiver,
    auth,
    create_team,
    mint,
    problem,
)

Client = TestClient[web.Request, web.Application]
SEND = auth(mint("payments"))


async def scrape(client: Client) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    resp = await client.get("/metrics")
    assert resp.status == 200
    assert resp.headers["Content-Type"].startswith("text/plain")
    samples = {}
    for family in text_string_to_metric_families(await resp.text()):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def value(samples: dict[Any, float], name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


async def test_metrics_move_with_traffic(
    make_client: ClientFactory, provider: FakeProvider, receiver: Receiver
) -> None:
    client = await make_client(webhook_retry_schedule=(0.0,))
    await create_team(
        client, "payments", daily_limit=3, alert_thresholds=[], callback_url=receiver.url
    )
    receiver.failures = 1
    provider.dlr = "after"
    assert (
        await client.post(
            "/messages", json={"to": ["0788000001", "0788000013"], "text": "x"}, headers=SEND
        )
    ).status == 201
    await provider.settle_reports()
    await receiver.wait_for(2)
    provider.mode = "error"
    await client.post("/messages", json={"to": "0788000002", "text": "x"}, headers=SEND)
    await client.post(
        "/messages",
        json={"to": ["0788000003", "0788000004", "0788000005"], "text": "x"},
        headers=SEND,
    )
    await client.get("/messages/msg_missing", headers=SEND)
    # delivered, failed (gave up), the 502's failed message, and the 429's usage.limit_reached
    await receiver.wait_for(4)
    async with asyncio.timeout(5):
        while True:  # each attempt is recorded just after the receiver answers
            s = await scrape(client)
            if (
                value(s, "gateway_webhook_attempts_total", result="delivered") == 3
                and value(s, "gateway_webhook_attempts_total", result="failed") == 1
            ):
                break
            await asyncio.sleep(0.02)
    # Once more: a scrape reads the table before the counters, so an attempt that finished in
    # between shows in the counters of that scrape but not in its backlog.
    s = await scrape(client)
    assert (
        value(s, "gateway_http_requests_total", route="/messages", method="POST", status="201") == 1
    )
    assert (
        value(s, "gateway_http_requests_total", route="/messages", method="POST", status="429") == 1
    )
    assert (
        value(s, "gateway_http_requests_total", route="/messages/{id}", method="GET", status="404")
        == 1
    )
    assert (
        value(s, "gateway_http_request_duration_seconds_count", route="/messages", method="POST")
        == 3
    )
    assert value(s, "gateway_messages_total", status="sent") == 1
    assert value(s, "gateway_messages_total", status="failed") == 2
    assert value(s, "gateway_messages_total", status="delivered") == 1
    assert value(s, "gateway_provider_errors_total", kind="error") == 1
    assert value(s, "gateway_provider_request_duration_seconds_count") == 2
    assert value(s, "gateway_quota_rejections_total", team="payments", quota="daily_limit") == 1
    assert value(s, "gateway_dlr_received_total", status="delivered", outcome="applied") == 1
    assert value(s, "gateway_webhook_attempts_total", result="failed") == 1
    assert value(s, "gateway_webhook_attempts_total", result="delivered") == 3
    assert value(s, "gateway_webhooks_failed") == 1
    assert value(s, "gateway_webhook_backlog") == 0
    assert API_KEY not in str(s) and PASSWORD not in str(s)


async def test_readyz_follows_the_database(client: Client) -> None:
    resp = await client.get("/readyz")
    assert resp.status == 200
    ready = await resp.json()
    assert ready["status"] == "ready" and abs(ready["clock_offset_seconds"]) < 1
    assert resp.headers["Server"] == "sms-gateway"  # no software version
    await client.app[STORE].close()  # the database goes away under the running server
    await problem(await client.get("/readyz"), 503, "not_ready")
    assert (await client.get("/healthz")).status == 200  # alive, just not ready


async def test_request_id_is_echoed_or_made_up(client: Client) -> None:
    resp = await client.get("/healthz", headers={"X-Request-ID": "abc-123"})
    assert resp.headers["X-Request-ID"] == "abc-123"
    made = (await client.get("/healthz")).headers["X-Request-ID"]
    assert len(made) == 32
    bad = await client.get("/healthz", headers={"X-Request-ID": "no spaces allowed"})
    assert bad.headers["X-Request-ID"] != "no spaces allowed"
    error = await client.get("/nope", headers={"X-Request-ID": "err-1"})
    assert error.status == 404 and error.headers["X-Request-ID"] == "err-1"


async def test_log_lines_are_json_with_the_request_id(
    client: Client, provider: FakeProvider, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    # A new connection: aiohttp asks the access logger whether it is on once per connection.
    async with aiohttp.ClientSession() as http:
        await http.post(
            client.make_url("/messages"),
            json={"to": "0788000001", "text": "x"},
            headers={**SEND, "X-Request-ID": "trace-42"},
        )
    formatter = JsonFormatter()
    lines = [json.loads(formatter.format(r)) for r in caplog.records]
    access = [line for line in lines if line["logger"] == "aiohttp.access"]
    assert access[-1]["request_id"] == "trace-42"
    assert access[-1]["path"] == "/messages" and access[-1]["status"] == 201
    # what the send did is on the same line: one line a request
    assert access[-1]["team"] == "payments" and access[-1]["outcome"] == "sent"
    assert access[-1]["provider_calls"] == 1 and access[-1]["batch_id"].startswith("bat_")


def test_redactor_removes_secrets_and_their_shapes() -> None:
    token = mint()
    redactor = Redactor([PASSWORD, API_KEY, JWT_SECRET])
    text = (
        f"password={PASSWORD}&api_key={API_KEY} key {JWT_SECRET} "
        f"Authorization: Bearer {token} jwt {token} secret whsec_QUJDREVGR0hJSktMTU5PUA== "
        "GET /dlr/x?username=u&password=hunter2&command=deliver"
    )
    clean = redactor.redact(text)
    for secret in (PASSWORD, API_KEY, JWT_SECRET, token, "QUJDREVGR0hJSktMTU5PUA", "hunter2"):
        assert secret not in clean
    assert REDACTED in clean and "command=deliver" in clean


def test_configured_logging_redacts_everything() -> None:
    stream = io.StringIO()
    root = logging.getLogger()
    saved = (list(root.handlers), root.level)
    try:
        configure("DEBUG", secrets=[PASSWORD], stream=stream)
        logging.getLogger("gateway.test").info("calling with %s", {"password": PASSWORD})
        try:
            raise ValueError(f"boom {PASSWORD}")
        except ValueError:
            logging.getLogger("gateway.test").exception("failed")
        flush()
    finally:
        root.handlers[:] = saved[0]
        root.setLevel(saved[1])
    output = stream.getvalue()
    assert PASSWORD not in output
    first, second = (json.loads(line) for line in output.splitlines())
    assert first["level"] == "info" and REDACTED in first["message"]
    assert "exception" in second and "boom" in second["exception"]


def test_token_bucket() -> None:
    now = [0.0]
    limiter = RateLimiter(clock=lambda: now[0])
    assert [limiter.take("t", 2) for _ in range(3)] == [0.0, 0.0, 0.5]  # a burst of two
    now[0] = 0.5
    assert limiter.take("t", 2) == 0.0
    assert limiter.take("t", None) == 0.0  # unlimited
    assert limiter.take("slow", 0.5) == 0.0
    assert limiter.take("slow", 0.5) == pytest.approx(2.0)
    assert retry_after(float("inf")) == "86400" and retry_after(0.2) == "1"


async def test_team_rate_limit(make_client: ClientFactory, provider: FakeProvider) -> None:
    client = await make_client()
    await create_team(client, "payments", rate_limit_per_second=1)
    await create_team(client, "alerts")
    assert (await client.get("/usage", headers=SEND)).status == 200
    refused = await client.get("/messages", headers=SEND)
    await problem(refused, 429, "rate_limited")
    assert refused.headers["Retry-After"] == "1"
    # Other teams and admins are not affected.
    assert (await client.get("/usage", headers=auth(mint("alerts")))).status == 200
    admin = auth(mint("root", "admin"))
    assert (await client.get("/admin/teams", headers=admin)).status == 200
    await client.patch("/admin/teams/payments", json={"rate_limit_per_second": None}, headers=admin)
    assert (await client.get("/messages", headers=SEND)).status == 200
    s = await scrape(client)
    assert value(s, "gateway_rate_limited_total", team="payments") == 1


async def test_an_unexpected_failure_is_a_logged_500_that_tells_nothing(
    client: Client, provider: FakeProvider, caplog: pytest.LogCaptureFixture
) -> None:
    """A database someone broke by hand: the caller gets a plain 500, the log gets the trace."""
    await client.app[STORE].run("DROP TABLE usage")
    resp = await client.post(
        "/messages",
        json={"to": "0788000001", "text": "x"},
        headers={**SEND, "X-Request-ID": "broken-1"},
    )
    body = await problem(resp, 500, "internal_error")
    assert resp.headers["X-Request-ID"] == "broken-1"
    assert "usage" not in json.dumps(body) and "sqlite" not in json.dumps(body).lower()
    crash = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert crash and "no such table: usage" in JsonFormatter().format(crash[-1])
    assert crash[-1].request_id == "broken-1"  # type: ignore[attr-defined]
    assert provider.calls == []
