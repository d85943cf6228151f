"""The dashboard in a real browser (Debian's chromium driven by Playwright): sign-in, figures
equal to the API's, forms, CSRF, a message's life, webhook retry, billing CSV."""

from __future__ import annotations

import asyncio
import hashlib
import os
import shutil
import sqlite3
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from standardwebhooks.webhooks import Webhook

from gateway.platform.settings import Settings

from .conftest import ClientFactory, FakeProvider, Receiver, auth, create_team, mint

Client = TestClient[web.Request, web.Application]
ADMIN = auth(mint("root", "admin"))
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
LAUNCH_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
]

if not os.path.exists(CHROMIUM) and os.environ.get("CI") != "true":
    pytest.skip("Chromium is not installed (`apt-get install chromium`)", allow_module_level=True)


class Browser:
    """A headless Chromium page on the gateway, recording every URL the page asked for."""

    def __init__(self, page: Any, base: str) -> None:
        self.page = page
        self.base = base
        self.requested: list[str] = []
        page.on("request", lambda request: self.requested.append(request.url))

    async def goto(self, path: str) -> Any:
        return await self.page.goto(self.base + path)

    async def sign_in(self, token: str | None = None) -> None:
        await self.goto("/dashboard/login")
        await self.page.fill("#token", token or mint("ops", "admin"))
        await self.page.click("button[type=submit]")

    async def figure(self, scope: str, name: str) -> str:
        text: str = await self.page.inner_text(f'{scope} [data-figure="{name}"]')
        return text.strip()

    def only_the_gateway(self) -> None:
        hosts = {urlsplit(url).netloc for url in self.requested if not url.startswith("data:")}
        assert hosts == {urlsplit(self.base).netloc}, hosts


@pytest.fixture
async def browser(make_client: ClientFactory) -> AsyncIterator[tuple[Browser, Client]]:
    from playwright.async_api import async_playwright

    client = await make_client()
    base = str(client.make_url("")).rstrip("/")
    async with async_playwright() as p:
        chromium = await p.chromium.launch(
            executable_path=CHROMIUM, headless=True, args=LAUNCH_ARGS
        )
        context = await chromium.new_context(viewport={"width": 1280, "height": 900})
        page = await context.new_page()
        shown = Browser(page, base)
        try:
            yield shown, client
        finally:
            shown.only_the_gateway()  # every page, style and chart came from the gateway
            await chromium.close()


async def test_sign_in_and_out(browser: tuple[Browser, Client], settings: Settings) -> None:
    shown, _ = browser
    await shown.goto("/dashboard/teams")
    assert shown.page.url.endswith("/dashboard/login")  # no session: 303 to the form
    await shown.sign_in("not.a.token")
    assert "Refused" in await shown.page.inner_text("main")
    await shown.sign_in(mint("payments"))  # a team's token, without the admin scope
    assert "no admin scope" in await shown.page.inner_text("main")
    await shown.sign_in()
    assert shown.page.url.endswith("/dashboard/")
    [cookie] = await shown.page.context.cookies()
    assert cookie["httpOnly"] and cookie["sameSite"] == "Strict" and not cookie["secure"]
    stolen = {cookie["name"]: cookie["value"]}
    with sqlite3.connect(settings.database) as conn:  # the server keeps only a hash of it
        rows = conn.execute("SELECT id_hash, data FROM dashboard_sessions").fetchall()
    assert [r[0] for r in rows] == [hashlib.sha256(cookie["value"].encode()).hexdigest()]
    assert cookie["value"] not in rows[0][1]
    async with aiohttp.ClientSession(cookies=stolen) as http:
        async with http.get(shown.base + "/dashboard/teams", allow_redirects=False) as resp:
            assert resp.status == 200  # the cookie is the session
    await shown.page.click("text=Sign out")
    assert shown.page.url.endswith("/dashboard/login")
    async with aiohttp.ClientSession(cookies=stolen) as http:
        async with http.get(shown.base + "/dashboard/teams", allow_redirects=False) as resp:
            assert resp.status == 303  # ended on the server: the old cookie no longer works


async def send(client: Client, team: str, to: list[str], **fields: Any) -> dict[str, Any]:
    resp = await client.post(
        "/messages", json={"to": to, "text": "hello", **fields}, headers=auth(mint(team))
    )
    assert resp.status == 201, await resp.text()
    body: dict[str, Any] = await resp.json()
    return body


async def test_the_overview_shows_what_the_api_answers(
    browser: tuple[Browser, Client], provider: FakeProvider
) -> None:
    shown, client = browser
    await create_team(client, "payments")
    await create_team(client, "alerts")
    provider.dlr = "after"
    await send(client, "payments", ["0788000001", "0788000002", "0788000013"])  # one refused
    await send(client, "alerts", ["0788000099"])  # undelivered
    await provider.settle_reports()
    await shown.sign_in()
    counts: dict[str, int] = {}
    for team in ("payments", "alerts"):
        listed = await client.get("/messages", headers=auth(mint(team)))
        for m in (await listed.json())["data"]:
            counts[m["status"]] = counts.get(m["status"], 0) + 1
    billing = await (await client.get("/admin/usage", headers=ADMIN)).json()
    for scope in ("#today", "#month"):
        assert await shown.figure(scope, "messages") == str(sum(counts.values()))
        for status in ("delivered", "undelivered", "failed", "sent"):
            assert await shown.figure(scope, status) == str(counts.get(status, 0))
        assert await shown.figure(scope, "delivery-rate") == "50.0 %"  # 2 of 4 final
    assert await shown.figure("#month", "cost") == f"{billing['totals']['cost']} RWF"
    assert "Messages created in the last 24 hours" in await shown.page.inner_html("main")


async def test_the_overview_shows_the_queue(
    browser: tuple[Browser, Client], provider: FakeProvider
) -> None:
    shown, client = browser
    await create_team(client, "payments")
    later = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
    resp = await client.post(
        "/messages",
        json={"to": ["0788000001", "0788000002"], "text": "later", "send_at": later},
        headers=auth(mint("payments")),
    )
    assert resp.status == 202, await resp.text()
    listed = await client.get("/messages?status=scheduled", headers=auth(mint("payments")))
    scheduled = len((await listed.json())["data"])
    await shown.sign_in()
    assert await shown.figure("#queue", "queue-scheduled") == str(scheduled) == "2"
    assert await shown.figure("#queue", "queue-queued") == "0"
    assert await shown.figure("#queue", "queue-age") == "\u2013"  # nothing is due yet (an en dash)
    await shown.page.click("#queue >> text=Scheduled")
    assert "status=scheduled" in shown.page.url
    assert await shown.page.locator("main .status.scheduled").count() >= 2


async def test_a_team_form_changes_what_the_api_answers(
    browser: tuple[Browser, Client],
) -> None:
    shown, client = browser
    await create_team(client, "payments", name="Payments", monthly_budget=500, daily_limit=3)
    await shown.sign_in()
    await shown.goto("/dashboard/teams/payments")
    assert await shown.page.input_value("#monthly_budget") == "500"  # filled with the values
    await shown.page.fill("#daily_limit", "7")
    await shown.page.fill("#monthly_budget", "")  # emptied: unlimited
    await shown.page.click("text=Save")
    team = await (await client.get("/admin/teams/payments", headers=ADMIN)).json()
    assert (team["daily_limit"], team["monthly_budget"], team["name"]) == (7, None, "Payments")
    for field, value, reason in (
        ("#daily_limit", "-3", "whole number"),
        ("#callback_url", "http://169.254.169.254/latest", "link-local"),
    ):
        await shown.goto("/dashboard/teams/payments")
        await shown.page.fill(field, value)
        await shown.page.click("text=Save")
        assert reason in await shown.page.inner_text(".error")
        again = await (await client.get("/admin/teams/payments", headers=ADMIN)).json()
        assert again == team  # nothing changed
    await shown.goto("/dashboard/teams")
    await shown.page.fill("#id", "Not A Slug")
    await shown.page.click("text=Create team")
    assert "slug" in await shown.page.inner_text(".error")
    await shown.page.fill("#id", "billing-team")
    await shown.page.fill("#monthly_limit", "100")
    await shown.page.click("text=Create team")
    secret = await shown.page.inner_text("#webhook-secret")
    assert secret.startswith("whsec_")
    created = await (await client.get("/admin/teams/billing-team", headers=ADMIN)).json()
    assert created["monthly_limit"] == 100 and created["daily_limit"] is None
    await shown.page.click("text=Deactivate")
    created = await (await client.get("/admin/teams/billing-team", headers=ADMIN)).json()
    assert created["active"] is False
    resp = await shown.goto("/dashboard/teams/no-such-team")
    assert resp.status == 404


async def test_a_post_without_the_csrf_token_changes_nothing(
    browser: tuple[Browser, Client], settings: Settings
) -> None:
    shown, client = browser
    await create_team(client, "payments", daily_limit=3)
    await shown.sign_in()
    cookies = {c["name"]: c["value"] for c in await shown.page.context.cookies()}
    async with aiohttp.ClientSession(cookies=cookies) as http:
        for csrf in (None, "guessed"):
            form = {"daily_limit": "999", **({"csrf": csrf} if csrf else {})}
            async with http.post(
                shown.base + "/dashboard/teams/payments", data=form, allow_redirects=False
            ) as resp:
                assert resp.status == 403
    team = await (await client.get("/admin/teams/payments", headers=ADMIN)).json()
    assert team["daily_limit"] == 3


async def test_a_message_found_by_reference_goes_from_sent_to_delivered(
    browser: tuple[Browser, Client], provider: FakeProvider
) -> None:
    shown, client = browser
    await create_team(client, "payments")
    answer = await send(client, "payments", ["0788000001"], reference="order-42")
    [message] = answer["messages"]
    await shown.sign_in()
    await shown.goto("/dashboard/messages")
    await shown.page.fill("#f-reference", "order-42")
    await shown.page.click("text=Filter")
    await shown.page.click(f"text={message['id']}")
    assert await shown.page.inner_text("#status") == "sent"
    call = provider.calls[-1]
    status = await provider.report(call["dlrurl"], "250788000001", message["provider_message_id"])
    assert status == 200
    await shown.page.reload()
    assert await shown.page.inner_text("#status") == "delivered"
    timeline = await shown.page.inner_text(".timeline")
    assert [line.split()[0] for line in timeline.splitlines()] == ["sending", "sent", "delivered"]


async def test_a_failed_webhook_is_delivered_after_its_retry_button(
    make_client: ClientFactory, receiver: Receiver, provider: FakeProvider
) -> None:
    from playwright.async_api import async_playwright

    client = await make_client(webhook_retry_schedule=(0.0,))  # one attempt, then failed
    await create_team(client, "payments", callback_url=receiver.url)
    receiver.failures = 1
    await send(client, "payments", ["0788000013"])  # refused: a message.failed webhook
    hook: dict[str, Any] = {}
    async with asyncio.timeout(10):
        while not hook:
            listed = await client.get("/admin/webhooks?status=failed", headers=ADMIN)
            hook = next(iter((await listed.json())["data"]), {})
            await asyncio.sleep(0.02)
    async with async_playwright() as p:
        chromium = await p.chromium.launch(
            executable_path=CHROMIUM, headless=True, args=LAUNCH_ARGS
        )
        try:
            shown = Browser(await chromium.new_page(), str(client.make_url("")).rstrip("/"))
            await shown.sign_in()
            await shown.goto("/dashboard/webhooks")
            await shown.page.click(f"#{hook['id']} >> text=Retry now")
            assert "queued again" in await shown.page.inner_text(".notice")
            await receiver.wait_for(2)
            async with asyncio.timeout(10):
                while True:
                    listed = await client.get("/admin/webhooks?status=delivered", headers=ADMIN)
                    if [h["id"] for h in (await listed.json())["data"]] == [hook["id"]]:
                        break
                    await asyncio.sleep(0.02)
            shown.only_the_gateway()
        finally:
            await chromium.close()


async def test_the_billing_csv_is_the_apis(browser: tuple[Browser, Client]) -> None:
    shown, client = browser
    await create_team(client, "payments")
    await create_team(client, "alerts")
    await send(client, "payments", ["0788000001", "0788000002"])
    await shown.sign_in()
    await shown.goto("/dashboard/billing")
    assert await shown.page.inner_text("#bill-payments td:nth-child(4)") == "150"
    href = await shown.page.get_attribute("#csv", "href")
    assert href is not None
    downloaded = await shown.page.context.request.get(shown.base + href)
    api = await client.get("/admin/usage", headers={**ADMIN, "Accept": "text/csv"})
    assert await downloaded.text() == await api.text()
    assert downloaded.headers["content-type"].startswith("text/csv")


async def test_odd_input_is_never_a_500(browser: tuple[Browser, Client]) -> None:
    shown, client = browser
    await create_team(client, "payments")
    await shown.sign_in()
    cookies = {c["name"]: c["value"] for c in await shown.page.context.cookies()}
    odd = [
        "/dashboard/messages?after=0001-01-01&before=9999-12-31",
        "/dashboard/messages?after=yesterday",
        "/dashboard/messages?to=12&status=nope&cursor=xyz",
        "/dashboard/messages?team=%00&reference=%ff",
        "/dashboard/messages/msg_nope",
        "/dashboard/teams/..%2F..",
        "/dashboard/billing?month=2026-13",
        "/dashboard/billing.csv?month=x",
    ]
    async with aiohttp.ClientSession(cookies=cookies) as http:
        for path in odd:
            async with http.get(shown.base + path, allow_redirects=False) as resp:
                assert resp.status < 500, (path, resp.status)
        csrf = await shown.page.get_attribute('input[name="csrf"]', "value")
        for form in (
            {"daily_limit": "1e309"},
            {"rate_limit_per_second": "nan"},
            {"monthly_budget": "9" * 40},
            {"active": "maybe"},
            {"name": ""},
        ):
            async with http.post(
                shown.base + "/dashboard/teams/payments", data={"csrf": csrf, **form}
            ) as resp:
                assert resp.status == 422, (form, resp.status)
    team = await (await client.get("/admin/teams/payments", headers=ADMIN)).json()
    assert (team["daily_limit"], team["rate_limit_per_second"], team["active"]) == (
        None,
        None,
        True,
    )


async def test_a_change_from_the_dashboard_is_audited_and_shown(
    browser: tuple[Browser, Client], receiver: Receiver
) -> None:
    shown, client = browser
    await create_team(client, "payments", daily_limit=5, callback_url=receiver.url)
    await shown.sign_in(mint("ops-carol", "admin"))
    await shown.goto("/dashboard/teams/payments")
    assert await shown.page.input_value("#alert_thresholds") == "80, 100"
    await shown.page.fill("#daily_limit", "10")
    await shown.page.fill("#alert_thresholds", "50, 100")
    await shown.page.click("text=Save")
    page = await (await client.get("/admin/audit", headers=ADMIN)).json()
    [change, created] = page["data"]
    assert (change["actor"], change["source"], change["action"]) == (
        "ops-carol",
        "dashboard",
        "team.updated",
    )
    assert change["before"] == {"daily_limit": 5, "alert_thresholds": [80, 100]}
    assert change["after"] == {"daily_limit": 10, "alert_thresholds": [50, 100]}
    assert created["source"] == "api"
    history = await shown.page.inner_text("#history")  # the team page lists its own history
    assert "team.updated" in history and "ops-carol" in history
    await shown.goto("/dashboard/audit?source=x")  # an unknown filter: said, not a 500
    assert "not a filter" in await shown.page.inner_text(".error")
    await shown.goto("/dashboard/audit")
    await shown.page.fill("#f-actor", "ops-carol")
    await shown.page.click("text=Filter")
    rows = await shown.page.locator("table.audit tbody tr").all_inner_texts()
    assert len(rows) == 1 and "team.updated" in rows[0]
    # a send to half the daily limit: this month's alerts on the overview and the team page
    resp = await client.post(
        "/messages",
        json={"to": [f"078800000{i}" for i in range(5)], "text": "hi"},
        headers=auth(mint("payments")),
    )
    assert resp.status == 201
    await shown.goto("/dashboard/")
    alerts = await shown.page.inner_text("#alerts")
    assert "usage.threshold_reached" in alerts and "5 of 10" in alerts and "50 %" in alerts
    await shown.goto("/dashboard/teams/payments")
    assert "usage.threshold_reached" in await shown.page.inner_text("#alerts")


async def test_suppressions_senders_and_test_sends_from_the_dashboard(
    browser: tuple[Browser, Client], provider: FakeProvider
) -> None:
    shown, client = browser
    await create_team(client, "payments")
    await shown.sign_in(mint("ops-dana", "admin"))
    # grant senders on the team form: the API refuses any other from now on
    await shown.goto("/dashboard/teams/payments")
    await shown.page.fill("#senders", "PAYCO, PAYCO OTP")
    await shown.page.click("text=Save")
    team = await (await client.get("/admin/teams/payments", headers=ADMIN)).json()
    assert team["senders"] == ["PAYCO", "PAYCO OTP"]
    assert await shown.page.input_value("#senders") == "PAYCO, PAYCO OTP"
    resp = await client.post(
        "/messages",
        json={"to": "0788000001", "text": "x", "sender": "OTHER"},
        headers=auth(mint("payments")),
    )
    assert resp.status == 422
    # suppress one number for every team, import two for the team, remove one
    await shown.goto("/dashboard/suppressions")
    await shown.page.fill("#s-number", "0788 000 001")
    await shown.page.fill("#s-reason", "complaint")
    await shown.page.click("#add button")
    assert "250788000001 suppressed for every team" in await shown.page.inner_text(".notice")
    await shown.page.fill("#i-numbers", "0788000002\nnot a number\n0788000003")
    await shown.page.fill("#i-team", "payments")
    await shown.page.click("#import button")
    assert "line 2" in await shown.page.inner_text(".error")  # all or nothing: none imported
    await shown.page.fill("#i-numbers", "0788000002\n0788000003")
    await shown.page.click("#import button")
    assert "2 added" in await shown.page.inner_text(".notice")
    rows = await shown.page.locator("#entries tbody tr").all_inner_texts()
    assert len(rows) == 3 and "every team" in rows[0] and "complaint" in rows[0]
    await shown.page.locator("#entries tbody tr").nth(2).locator("button").click()
    assert "may be texted again" in await shown.page.inner_text(".notice")
    listed = await (await client.get("/admin/suppressions", headers=ADMIN)).json()
    assert [(e["team"], e["number"]) for e in listed["data"]] == [
        (None, "250788000001"),
        ("payments", "250788000002"),
    ]
    page = await (await client.get("/admin/audit?actor=ops-dana", headers=ADMIN)).json()
    assert {e["source"] for e in page["data"]} == {"dashboard"}
    assert [e["action"] for e in page["data"]][:3] == [
        "suppression.removed",
        "suppression.imported",
        "suppression.added",
    ]
    # a send: one suppressed, one sent; then a test token's send, shown apart on the overview
    body = await send(client, "payments", ["0788000001", "0788000009"])
    assert sorted(m["status"] for m in body["messages"]) == ["failed", "sent"]
    resp = await client.post(
        "/messages",
        json={"to": ["0788000005", "0788000006"], "text": "ci"},
        headers=auth(mint("payments", "messages:test")),
    )
    assert resp.status == 201
    await shown.goto("/dashboard/")
    today = shown.page.locator("#today")
    assert await today.locator("[data-figure=test-sends]").inner_text() == "2"
    assert await today.locator("[data-figure=messages]").inner_text() == "2"  # real ones only
    await shown.goto("/dashboard/messages?test=true")
    rows = await shown.page.locator("table.list tbody tr").all_inner_texts()
    assert len(rows) == 2 and all("TEST" in r.upper() for r in rows)
    assert len(provider.calls) == 1


async def test_webhook_endpoints_from_the_team_page(
    browser: tuple[Browser, Client], receiver: Receiver, provider: FakeProvider
) -> None:
    shown, client = browser
    await create_team(client, "payments")
    receiver.failures, receiver.status_when_failing = 1, 410  # gone, once
    await shown.sign_in(mint("ops-dana", "admin"))
    await shown.goto("/dashboard/teams/payments")
    await shown.page.fill("#endpoints input[name=url]", receiver.url)
    await shown.page.click("#endpoints >> text=Add endpoint")
    assert "Secret of endpoint wep_" in await shown.page.inner_text(".secret")
    secret = (await shown.page.inner_text("#webhook-secret")).strip()
    [endpoint] = (await (await client.get("/webhook-endpoints", headers=ADMIN)).json())["data"]
    sent = await send(client, "payments", ["0788000013"])  # message.failed: answered 410
    await receiver.wait_for(1)
    async with asyncio.timeout(10):
        while (
            await (await client.get(f"/webhook-endpoints/{endpoint['id']}", headers=ADMIN)).json()
        )["enabled"]:
            await asyncio.sleep(0.05)
    await shown.goto("/dashboard/teams/payments")
    row = shown.page.locator(f"#{endpoint['id']}")
    assert "disabled" in await row.inner_text() and "410" in await row.inner_text()
    await row.locator("text=Enable").click()
    assert "enabled" in await shown.page.inner_text(".notice")
    await shown.page.locator(f"#{endpoint['id']} >> text=Recover").click()
    assert "1 failed deliveries" in await shown.page.inner_text(".notice")
    await receiver.wait_for(2)
    headers, body = receiver.received[1]
    assert Webhook(secret).verify(body, headers)["data"]["id"] == sent["messages"][0]["id"]
    async with asyncio.timeout(10):
        while True:
            await shown.goto(f"/dashboard/messages/{sent['messages'][0]['id']}")
            log = await shown.page.locator("table.attempt-log tbody tr").all_inner_texts()
            if len(log) == 2:
                break
            await asyncio.sleep(0.1)
    assert "410" in log[0] and "204" in log[1]
    page = await (await client.get("/admin/audit?actor=ops-dana", headers=ADMIN)).json()
    assert [e["action"] for e in page["data"]][:3] == [
        "webhook_endpoint.recovered",
        "webhook_endpoint.enabled",
        "webhook_endpoint.created",
    ]
