"""Admin team management through the API."""

from __future__ import annotations

from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from .conftest import ClientFactory, auth, create_team, mint, problem

pytestmark = pytest.mark.both_databases  # every test here runs on SQLite and PostgreSQL

Client = TestClient[web.Request, web.Application]
ADMIN = auth(mint("root", "admin"))


async def test_create_get_list_update(make_client: ClientFactory) -> None:
    client = await make_client()
    created = await create_team(
        client,
        "payments",
        name="Payments",
        daily_limit=1000,
        monthly_limit=20000,
        monthly_budget=500000,
        callback_url="https://payments.internal/sms",
    )
    assert created["webhook_secret"].startswith("whsec_")
    assert len(created["webhook_secret"]) == len("whsec_") + 44
    assert created["active"] is True and created["rate_limit_per_second"] is None
    fetched = await (await client.get("/admin/teams/payments", headers=ADMIN)).json()
    assert "webhook_secret" not in fetched
    assert fetched == {k: v for k, v in created.items() if k != "webhook_secret"}
    await create_team(client, "alerts")
    listing = await (await client.get("/admin/teams", headers=ADMIN)).json()
    assert [t["id"] for t in listing["data"]] == ["alerts", "payments"]
    assert all("webhook_secret" not in t for t in listing["data"])
    resp = await client.patch(
        "/admin/teams/payments",
        json={"daily_limit": None, "name": "Pay", "rate_limit_per_second": 5},
        headers=ADMIN,
    )
    updated = await resp.json()
    assert resp.status == 200
    assert updated["daily_limit"] is None and updated["name"] == "Pay"
    assert updated["monthly_limit"] == 20000 and updated["rate_limit_per_second"] == 5.0


async def test_rotation_changes_the_secret(make_client: ClientFactory) -> None:
    client = await make_client()
    created = await create_team(client, "payments")
    resp = await client.post("/admin/teams/payments/webhook-secret", headers=ADMIN)
    rotated = await resp.json()
    assert resp.status == 200
    assert rotated["webhook_secret"].startswith("whsec_")
    assert rotated["webhook_secret"] != created["webhook_secret"]
    await problem(
        await client.post("/admin/teams/nope/webhook-secret", headers=ADMIN), 404, "team_not_found"
    )


async def test_duplicate_and_missing(make_client: ClientFactory) -> None:
    client = await make_client()
    await create_team(client, "payments")
    await problem(
        await client.post("/admin/teams", json={"id": "payments"}, headers=ADMIN),
        409,
        "team_exists",
    )
    await problem(await client.get("/admin/teams/nope", headers=ADMIN), 404, "team_not_found")
    await problem(
        await client.get("/admin/teams/Not%20A%20Slug", headers=ADMIN), 404, "team_not_found"
    )
    await problem(
        await client.patch("/admin/teams/nope", json={"name": "x"}, headers=ADMIN),
        404,
        "team_not_found",
    )


@pytest.mark.parametrize(
    ("body", "code"),
    [
        ({"id": "Bad Id"}, "validation_error"),
        ({"id": ""}, "validation_error"),
        ({}, "validation_error"),
        ({"id": "ok", "daily_limit": -1}, "validation_error"),
        ({"id": "ok", "daily_limit": 1.5}, "validation_error"),
        ({"id": "ok", "monthly_budget": True}, "validation_error"),
        ({"id": "ok", "rate_limit_per_second": 0}, "validation_error"),
        ({"id": "ok", "rate_limit_per_second": 5e-324}, "validation_error"),
        ({"id": "ok", "rate_limit_per_second": 1e7}, "validation_error"),
        ({"id": "ok", "callback_url": "not a url"}, "invalid_callback_url"),
        ({"id": "ok", "active": "yes"}, "validation_error"),
        ({"id": "ok", "webhook_secret": "whsec_x"}, "unknown_field"),
        ({"id": "ok", "name": ""}, "validation_error"),
    ],
)
async def test_bad_team_bodies(make_client: ClientFactory, body: dict[str, Any], code: str) -> None:
    client = await make_client()
    await problem(await client.post("/admin/teams", json=body, headers=ADMIN), 422, code)
    listing = await (await client.get("/admin/teams", headers=ADMIN)).json()
    assert listing["data"] == []


async def test_patch_rejects_id_change(make_client: ClientFactory) -> None:
    client = await make_client()
    await create_team(client, "payments")
    await problem(
        await client.patch("/admin/teams/payments", json={"id": "x"}, headers=ADMIN),
        422,
        "unknown_field",
    )


async def test_limit_change_applies_on_next_request(make_client: ClientFactory) -> None:
    client = await make_client()
    await create_team(client, "payments", daily_limit=0)
    send = auth(mint("payments"))
    body = {"to": "0788123456", "text": "x"}
    await problem(await client.post("/messages", json=body, headers=send), 429, "quota_exceeded")
    await client.patch("/admin/teams/payments", json={"daily_limit": 1}, headers=ADMIN)
    assert (await client.post("/messages", json=body, headers=send)).status == 201
