"""Webhook endpoints (SPEC 10): several per team with event filters, rotation with overlap,
receivers that say stop, endpoints disabled for failing and enabled again, recover, and the
attempt log. Real receivers on free ports; every test on SQLite and on PostgreSQL."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from .conftest import (
    ClientFactory,
    FakeProvider,
    auth,
    create_team,
    mint,
    problem,
)
from .conftest import query as read

pytestmark = pytest.mark.both_databases

Client = TestClient[web.Request, web.Application]
SEND = auth(mint("payments"))
OTHER = auth(mint("alerts"))
ADMIN = auth(mint("root", "admin"))
OPERATOR_SECRET = "whsec_" + base64.b64encode(os.urandom(32)).decode()


@dataclass
class Hooks:
    """A receiver whose answer `respond(headers, body)` picks: (status, headers, text)."""

    url: str = ""
    received: list[tuple[dict[str, str], bytes, float]] = field(default_factory=list)
    respond: Callable[[dict[str, str], bytes], tuple[int, dict[str, str], str]] = (
        lambda headers, body: (204, {}, "")
    )

    async def handle(self, request: web.Request) -> web.Response:
        headers, body = dict(request.headers), await request.read()
        self.received.append((headers, body, time.monotonic()))
        status, extra, text = self.respond(headers, body)
        return web.Response(status=status, headers=extra, text=text or None)

    def payloads(self, secret: str) -> list[dict[str, Any]]:
        """Every delivery, verified with `secret` (the Standard Webhooks library)."""
        return [Webhook(secret).verify(body, headers) for headers, body, _ in self.received]

    async def wait_for(self, count: int, timeout: float = 10.0) -> None:
        async with asyncio.timeout(timeout):
            while len(self.received) < count:
                await asyncio.sleep(0.02)


@pytest.fixture
async def hooks() -> AsyncIterator[Callable[[], Any]]:
    """Start receivers on free ports: `await hooks()` gives one more."""
    servers: list[TestServer] = []

    async def start() -> Hooks:
        state = Hooks()
        app = web.Application()
        app.router.add_post("/hooks", state.handle)
        server = TestServer(app, host="127.0.0.1")
        await server.start_server()
        servers.append(server)
        state.url = str(server.make_url("/hooks"))
        return state

    yield start
    for server in servers:
        await server.close()


async def endpoint(
    client: Client, url: str, headers: dict[str, str] = SEND, **fields: Any
) -> dict[str, Any]:
    resp = await client.post("/webhook-endpoints", json={"url": url, **fields}, headers=headers)
    body: dict[str, Any] = await resp.json()
    assert resp.status == 201, body
    return body


async def send(client: Client, to: Any) -> dict[str, Any]:
    resp = await client.post("/messages", json={"to": to, "text": "hello"}, headers=SEND)
    body: dict[str, Any] = await resp.json()
    assert resp.status == 201, body
    return body


async def until(check: Callable[[], Any], timeout: float = 10.0) -> None:
    async with asyncio.timeout(timeout):
        while not await check():
            await asyncio.sleep(0.02)


async def get_endpoint(client: Client, endpoint_id: str) -> dict[str, Any]:
    resp = await client.get(f"/webhook-endpoints/{endpoint_id}", headers=SEND)
    assert resp.status == 200
    body: dict[str, Any] = await resp.json()
    return body


async def test_two_endpoints_get_exactly_the_events_they_want_once_and_the_callback_url_all(
    make_client: ClientFactory, provider: FakeProvider, hooks: Callable[[], Any]
) -> None:
    legacy, delivered_only, failures = await hooks(), await hooks(), await hooks()
    client = await make_client(webhook_retry_schedule=(0.0, 0.05, 0.05))
    team = await create_team(client, "payments", callback_url=legacy.url)
    a = await endpoint(client, delivered_only.url, events=["message.delivered"])
    b = await endpoint(
        client, failures.url, events=["message.failed", "message.undelivered"], description="ops"
    )
    assert a["secret"].startswith("whsec_") and a["secret"] != b["secret"]
    provider.dlr = "after"
    sent = await send(client, ["0788000001", "0788000099", "0788000013"])
    ids = {m["to"][-2:]: m["id"] for m in sent["messages"]}
    await legacy.wait_for(3)
    await delivered_only.wait_for(1)
    await failures.wait_for(2)
    await provider.settle_reports()
    await asyncio.sleep(0.5)  # time for any delivery that should not happen
    assert [(p["type"], p["data"]["id"]) for p in delivered_only.payloads(a["secret"])] == [
        ("message.delivered", ids["01"])
    ]
    assert sorted((p["type"], p["data"]["id"]) for p in failures.payloads(b["secret"])) == sorted(
        [("message.failed", ids["13"]), ("message.undelivered", ids["99"])]
    )
    # the team's callback_url gets every event, signed with the team's secret, as before
    assert sorted(p["type"] for p in legacy.payloads(team["webhook_secret"])) == [
        "message.delivered",
        "message.failed",
        "message.undelivered",
    ]
    all_ids = [
        h["webhook-id"] for r in (legacy, delivered_only, failures) for h, _, _ in r.received
    ]
    assert len(set(all_ids)) == 6
    with pytest.raises(WebhookVerificationError):
        delivered_only.payloads(b["secret"])


async def test_endpoints_are_a_teams_own_and_every_change_is_checked_and_audited(
    make_client: ClientFactory, hooks: Callable[[], Any], database: str
) -> None:
    receiver = await hooks()
    client = await make_client()
    await create_team(client, "payments")
    await create_team(client, "alerts")
    created = await endpoint(client, receiver.url)
    assert created["events"] == [
        "message.delivered",
        "message.undelivered",
        "message.failed",
        "message.expired",
        "message.canceled",
        "usage.threshold_reached",
        "usage.limit_reached",
    ]
    assert created["enabled"] is True and created["team"] == "payments"
    shown = await get_endpoint(client, created["id"])
    assert "secret" not in shown
    # the secret is sealed at rest
    stored = read(database, "SELECT secret FROM webhook_endpoints")
    assert created["secret"] not in json.dumps(stored) and stored[0][0].startswith("v1.")
    # another team sees nothing of it
    assert (await client.get(f"/webhook-endpoints/{created['id']}", headers=OTHER)).status == 404
    listed = await (await client.get("/webhook-endpoints", headers=OTHER)).json()
    assert listed == {"data": [], "next_cursor": None}
    resp = await client.patch(
        f"/webhook-endpoints/{created['id']}", json={"enabled": False}, headers=OTHER
    )
    await problem(resp, 404, "endpoint_not_found")
    # an admin sees every team's, and makes one for a team by naming it
    other = await endpoint(client, receiver.url, headers=ADMIN, team="alerts")
    assert other["team"] == "alerts"
    every = await (await client.get("/webhook-endpoints", headers=ADMIN)).json()
    assert [e["id"] for e in every["data"]] == [created["id"], other["id"]]
    only = await (await client.get("/webhook-endpoints?team=alerts", headers=ADMIN)).json()
    assert [e["id"] for e in only["data"]] == [other["id"]]
    # bad input: one 422 listing every problem, nothing changed
    resp = await client.post(
        "/webhook-endpoints",
        json={"url": "ftp://x", "events": ["message.sent"], "colour": "red"},
        headers=SEND,
    )
    body = await problem(resp, 422, "validation_error")
    assert {e["field"] for e in body["errors"]} == {"url", "events", "colour"}
    resp = await client.post(
        "/webhook-endpoints", json={"url": receiver.url, "team": "alerts"}, headers=SEND
    )
    await problem(resp, 422, "validation_error")
    resp = await client.patch(
        f"/webhook-endpoints/{created['id']}", json={"events": []}, headers=SEND
    )
    await problem(resp, 422, "validation_error")
    assert (await get_endpoint(client, created["id"]))["events"] == created["events"]
    # a change
    resp = await client.patch(
        f"/webhook-endpoints/{created['id']}",
        json={"events": ["message.failed"], "description": "alerts to ops"},
        headers=SEND,
    )
    assert resp.status == 200
    changed = await resp.json()
    assert changed["events"] == ["message.failed"] and changed["description"] == "alerts to ops"
    resp = await client.delete(f"/webhook-endpoints/{created['id']}", headers=SEND)
    assert resp.status == 204
    assert (await client.get(f"/webhook-endpoints/{created['id']}", headers=SEND)).status == 404
    actions = [
        a
        for (a,) in read(
            database,
            "SELECT action FROM audit_log WHERE target = ? ORDER BY seq",
            created["id"],
        )
    ]
    assert actions == [
        "webhook_endpoint.created",
        "webhook_endpoint.updated",
        "webhook_endpoint.deleted",
    ]


async def test_a_rotation_mid_traffic_never_fails_a_verification(
    make_client: ClientFactory, hooks: Callable[[], Any]
) -> None:
    receiver = await hooks()
    client = await make_client(webhook_secret_overlap=2.0)
    await create_team(client, "payments")
    created = await endpoint(client, receiver.url, events=["message.failed"])
    secrets = {"current": created["secret"]}
    refused: list[str] = []

    def respond(headers: dict[str, str], body: bytes) -> tuple[int, dict[str, str], str]:
        try:
            Webhook(secrets["current"]).verify(body, headers)
        except WebhookVerificationError:
            refused.append(headers["webhook-id"])
            return 400, {}, "bad signature"
        return 204, {}, ""

    receiver.respond = respond
    n = 0

    async def traffic(count: int) -> None:
        nonlocal n
        for _ in range(count):
            n += 1
            await send(client, f"0788{n:03d}713")  # the fake provider fails it: message.failed
            await asyncio.sleep(0.03)

    await traffic(5)
    resp = await client.post(f"/webhook-endpoints/{created['id']}/rotate-secret", headers=SEND)
    rotated = await resp.json()
    assert resp.status == 200 and rotated["secret"] != created["secret"]
    assert rotated["previous_secret_valid_until"] is not None
    await traffic(5)  # the receiver still checks with the old secret: both signatures came
    secrets["current"] = rotated["secret"]  # the team deploys the new one
    await traffic(5)
    await receiver.wait_for(15)
    during = len(receiver.received)
    overlap_signatures = [h["webhook-signature"] for h, _, _ in receiver.received[5:during]]
    assert all(len(s.split(" ")) == 2 for s in overlap_signatures)
    await asyncio.sleep(2.1)  # the overlap ends
    await traffic(3)
    await receiver.wait_for(during + 3)
    assert refused == []
    for headers, body, _ in receiver.received[during:]:
        assert len(headers["webhook-signature"].split(" ")) == 1
        Webhook(rotated["secret"]).verify(body, headers)
        with pytest.raises(WebhookVerificationError):
            Webhook(created["secret"]).verify(body, headers)


async def test_gone_disables_the_endpoint_at_once_and_tells_the_operator(
    make_client: ClientFactory, hooks: Callable[[], Any], database: str
) -> None:
    gone, operator = await hooks(), await hooks()
    gone.respond = lambda headers, body: (410, {}, "this endpoint is no more")
    client = await make_client(
        webhook_retry_schedule=(0.0, 0.05, 0.05),
        operator_webhook_url=operator.url,
        operator_webhook_secret=OPERATOR_SECRET,
    )
    await create_team(client, "payments")
    created = await endpoint(client, gone.url)
    await send(client, "0788000013")
    await gone.wait_for(1)
    await operator.wait_for(1)
    [event] = operator.payloads(OPERATOR_SECRET)
    assert event["type"] == "endpoint.disabled"
    assert event["data"]["id"] == created["id"] and event["data"]["disabled_reason"] == "gone"
    shown = await get_endpoint(client, created["id"])
    assert shown["enabled"] is False and shown["disabled_reason"] == "gone"
    await send(client, "0788000113")
    await asyncio.sleep(0.5)
    assert len(gone.received) == 1  # no further attempt, nothing queued for a disabled one
    [(status, attempts)] = read(
        database, "SELECT status, attempts FROM webhooks WHERE endpoint_id = ?", created["id"]
    )
    assert (status, attempts) == ("failed", 1)
    # enabling it again is one audited action
    resp = await client.patch(
        f"/webhook-endpoints/{created['id']}", json={"enabled": True}, headers=SEND
    )
    assert (await resp.json())["enabled"] is True
    actions = [
        a
        for (a,) in read(
            database, "SELECT action FROM audit_log WHERE target = ? ORDER BY seq", created["id"]
        )
    ]
    assert actions[-2:] == ["webhook_endpoint.disabled", "webhook_endpoint.enabled"]


async def test_retry_after_is_waited_and_every_attempt_is_logged(
    make_client: ClientFactory, hooks: Callable[[], Any]
) -> None:
    receiver = await hooks()
    answers = iter([(429, {"Retry-After": "3"}, "slow down"), (204, {}, "")])
    receiver.respond = lambda headers, body: next(answers)
    client = await make_client(webhook_retry_schedule=(0.0, 5.0, 5.0))
    await create_team(client, "payments")
    created = await endpoint(client, receiver.url)
    await send(client, "0788000013")
    await receiver.wait_for(2, timeout=15)
    first, second = receiver.received[0][2], receiver.received[1][2]
    assert 3.0 <= second - first < 5.0  # the receiver's 3 s (plus jitter), not the schedule's 5
    assert receiver.received[0][0]["webhook-id"] == receiver.received[1][0]["webhook-id"]

    async def the_hook() -> dict[str, Any]:
        listed = await (await client.get("/admin/webhooks", headers=ADMIN)).json()
        [hook] = [h for h in listed["data"] if h["endpoint_id"] == created["id"]]
        return dict(hook)

    async def delivered() -> bool:
        return bool((await the_hook())["status"] == "delivered")

    await until(delivered)
    hook = await the_hook()
    assert hook["attempts"] == 2
    resp = await client.get(f"/admin/webhooks/{hook['id']}/attempts", headers=ADMIN)
    log = (await resp.json())["data"]
    assert [(a["attempt"], a["http_status"], a["response"]) for a in log] == [
        (1, 429, "slow down"),
        (2, 204, ""),
    ]
    assert log[0]["error"] == "the receiver answered HTTP 429"
    assert all(a["duration_ms"] >= 0 and a["at"] for a in log)
    missing = await client.get("/admin/webhooks/whk_nope/attempts", headers=ADMIN)
    await problem(missing, 404, "webhook_not_found")


async def test_an_endpoint_failing_past_the_window_is_disabled_then_enabled(
    make_client: ClientFactory, hooks: Callable[[], Any]
) -> None:
    failing, operator = await hooks(), await hooks()
    failing.respond = lambda headers, body: (500, {}, "down")
    client = await make_client(
        webhook_retry_schedule=(0.0, 0.3, 0.3, 0.3, 0.3, 0.3, 0.3, 0.3),
        webhook_disable_after=1.0,
        operator_webhook_url=operator.url,
        operator_webhook_secret=OPERATOR_SECRET,
    )
    await create_team(client, "payments")
    created = await endpoint(client, failing.url)
    await send(client, "0788000013")

    async def disabled() -> bool:
        return not (await get_endpoint(client, created["id"]))["enabled"]

    await until(disabled)
    shown = await get_endpoint(client, created["id"])
    assert shown["disabled_reason"] == "failing"
    assert len(failing.received) >= 3  # it failed for the whole window first
    await operator.wait_for(1)
    [event] = operator.payloads(OPERATOR_SECRET)
    assert event["type"] == "endpoint.disabled" and event["data"]["disabled_reason"] == "failing"
    attempts = len(failing.received)
    await asyncio.sleep(0.8)
    assert len(failing.received) == attempts  # its waiting delivery failed with it
    failing.respond = lambda headers, body: (204, {}, "")
    resp = await client.patch(
        f"/webhook-endpoints/{created['id']}", json={"enabled": True}, headers=SEND
    )
    assert (await resp.json())["enabled"] is True
    await send(client, "0788000113")
    await failing.wait_for(attempts + 1)
    await asyncio.sleep(0.3)
    assert (await get_endpoint(client, created["id"]))["failing_since"] is None


async def test_recover_from_two_replicas_at_once_delivers_each_failed_delivery_once(
    make_client: ClientFactory, hooks: Callable[[], Any], database: str
) -> None:
    receiver = await hooks()
    down = {"now": True}
    receiver.respond = lambda headers, body: (503, {}, "") if down["now"] else (204, {}, "")
    first = await make_client(webhook_retry_schedule=(0.0,))  # one attempt, then failed
    second = await make_client(webhook_retry_schedule=(0.0,))
    await create_team(first, "payments")
    created = await endpoint(first, receiver.url, events=["message.failed"])
    before = await send(first, [f"0788{n:03d}713" for n in range(250)])
    since = before["messages"][0]["created_at"]
    await send(first, [f"0788{n:03d}813" for n in range(250)])

    async def all_failed() -> bool:
        rows = read(
            database,
            "SELECT COUNT(*) FROM webhooks WHERE endpoint_id = ? AND status = 'failed'",
            created["id"],
        )
        return bool(rows[0][0] == 500)

    await until(all_failed, timeout=30)
    down["now"] = False
    seen = len(receiver.received)
    answers = await asyncio.gather(
        *(
            c.post(
                f"/webhook-endpoints/{created['id']}/recover", json={"since": since}, headers=SEND
            )
            for c in (first, second)
        )
    )
    queued = [(await r.json())["queued"] for r in answers]
    assert all(r.status == 202 for r in answers)
    assert sorted(queued) == [0, 500]  # one of them took all 500; the other found none failed
    await receiver.wait_for(seen + 500, timeout=30)
    await asyncio.sleep(0.5)
    recovered = [h["webhook-id"] for h, _, _ in receiver.received[seen:]]
    assert len(recovered) == 500 and len(set(recovered)) == 500
    # oldest first: the first claims are the oldest deliveries (arrivals of one claim's 16, and
    # of the two replicas' claims, interleave on a loaded machine, so by their mean place: in
    # any order it would be about 250, from the newest about 490)
    oldest = sorted(recovered)
    places = [oldest.index(r) for r in recovered[:16]]
    assert sum(places) / len(places) < 100, places
    resp = await first.post(
        f"/webhook-endpoints/{created['id']}/recover", json={"since": "yesterday"}, headers=SEND
    )
    await problem(resp, 422, "validation_error")


async def test_usage_alerts_go_to_the_endpoints_that_want_them(
    make_client: ClientFactory, hooks: Callable[[], Any]
) -> None:
    usage, messages = await hooks(), await hooks()
    client = await make_client()
    await create_team(client, "payments", daily_limit=10, alert_thresholds=[50])
    wants = await endpoint(client, usage.url, events=["usage.threshold_reached"])
    await endpoint(client, messages.url, events=["message.delivered"])
    await send(client, [f"078800000{n}" for n in range(6)])
    await usage.wait_for(1)
    [alert] = usage.payloads(wants["secret"])
    assert alert["type"] == "usage.threshold_reached" and alert["data"]["threshold"] == 50
    await asyncio.sleep(0.3)
    assert messages.received == []


async def test_a_new_url_takes_the_waiting_deliveries_and_a_removed_endpoint_fails_them(
    make_client: ClientFactory, hooks: Callable[[], Any], database: str
) -> None:
    old, new = await hooks(), await hooks()
    old.respond = lambda headers, body: (500, {}, "moved away")
    client = await make_client(webhook_retry_schedule=(0.0, 1.0, 60.0))
    await create_team(client, "payments")
    created = await endpoint(client, old.url, events=["message.failed"])
    await send(client, "0788000013")
    await old.wait_for(1)  # failed once; the next attempt is a second away
    resp = await client.patch(
        f"/webhook-endpoints/{created['id']}", json={"url": new.url}, headers=SEND
    )
    assert (await resp.json())["url"] == new.url
    await new.wait_for(1)  # the retry went to the new URL, signed the same
    [payload] = new.payloads(created["secret"])
    assert payload["type"] == "message.failed" and len(old.received) == 1
    new.respond = lambda headers, body: (500, {}, "")
    await send(client, "0788000113")
    await new.wait_for(2)
    resp = await client.delete(f"/webhook-endpoints/{created['id']}", headers=SEND)
    assert resp.status == 204
    rows = read(
        database,
        "SELECT status, endpoint_id, last_error FROM webhooks ORDER BY id",
    )
    assert rows[0][:2] == ("delivered", None)  # history stays, without the endpoint
    assert rows[1] == ("failed", None, "the endpoint was deleted")
    await asyncio.sleep(1.3)
    assert len(new.received) == 2  # its retry was not made


async def test_limits_and_unknown_teams_are_clear_errors(
    make_client: ClientFactory, hooks: Callable[[], Any]
) -> None:
    receiver = await hooks()
    client = await make_client()
    await create_team(client, "payments")
    for _ in range(20):
        await endpoint(client, receiver.url)
    resp = await client.post("/webhook-endpoints", json={"url": receiver.url}, headers=SEND)
    await problem(resp, 409, "too_many_endpoints")
    resp = await client.post(
        "/webhook-endpoints", json={"url": receiver.url, "team": "nobody"}, headers=ADMIN
    )
    await problem(resp, 422, "unknown_team")
    resp = await client.get("/webhook-endpoints?team=nobody", headers=ADMIN)
    await problem(resp, 422, "unknown_team")
    resp = await client.get("/webhook-endpoints?colour=red", headers=SEND)
    await problem(resp, 422, "invalid_parameter")
    resp = await client.get("/webhook-endpoints/wep_nothing", headers=SEND)
    await problem(resp, 404, "endpoint_not_found")
    listed = await (await client.get("/webhook-endpoints?limit=15", headers=SEND)).json()
    rest = await (
        await client.get(f"/webhook-endpoints?cursor={listed['next_cursor']}", headers=SEND)
    ).json()
    assert len(listed["data"]) == 15 and len(rest["data"]) == 5 and rest["next_cursor"] is None
    reader = auth(mint("payments", "messages:read"))
    resp = await client.get("/webhook-endpoints", headers=reader)
    await problem(resp, 403, "insufficient_scope")


async def test_a_replica_with_another_secret_key_refuses_to_sign_and_says_why(
    make_client: ClientFactory, hooks: Callable[[], Any]
) -> None:
    receiver = await hooks()
    first = await make_client()
    await create_team(first, "payments")
    created = await endpoint(first, receiver.url, events=["message.failed"])
    await first.close()
    other = await make_client(
        secret_key="another-sealing-key-" + "9" * 32, webhook_retry_schedule=(0.0,)
    )
    await send(other, "0788000013")

    async def failed() -> list[dict[str, Any]]:
        listed = await (await other.get("/admin/webhooks?status=failed", headers=ADMIN)).json()
        return [h for h in listed["data"] if h["endpoint_id"] == created["id"]]

    async def any_failed() -> bool:
        return bool(await failed())

    await until(any_failed)
    [hook] = await failed()
    assert "cannot be opened" in hook["last_error"] and "GATEWAY_SECRET_KEY" in hook["last_error"]
    assert receiver.received == []  # nothing went out unsigned or signed with another secret
