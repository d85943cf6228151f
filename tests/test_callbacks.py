"""Callback URLs may not make the gateway call its own edge: loopback, link-local, unspecified."""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import sqlite3
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from gateway.delivery.callbacks import CallbackPolicy, CallbackRefused, GuardedResolver
from gateway.platform.settings import Settings

from .conftest import ClientFactory, FakeProvider, Receiver, auth, create_team, mint

Client = TestClient[web.Request, web.Application]
SEND = auth(mint("payments"))
ADMIN = auth(mint("root", "admin"))

REFUSED = [
    "http://127.0.0.1:9000/hooks",
    "http://localhost/hooks",
    "http://api.localhost/hooks",
    "http://[::1]/hooks",
    "http://[::ffff:127.0.0.1]/hooks",
    "http://2130706433/hooks",  # 127.0.0.1 written as one number
    "http://0x7f.1/hooks",
    "http://169.254.169.254/latest/meta-data",
    "http://[fe80::1]/hooks",
    "http://0.0.0.0:8080/hooks",
    "http://[::]/hooks",
    "ftp://team.internal/hooks",
    "http://team.internal:port/hooks",
]


@pytest.mark.parametrize("url", REFUSED)
async def test_refused_where_a_url_is_given(
    url: str, make_client: ClientFactory, settings: Settings
) -> None:
    client = await make_client(callback_allowed_networks=())
    await create_team(client, "payments")
    resp = await client.post(
        "/messages", json={"to": "0788000001", "text": "x", "callback_url": url}, headers=SEND
    )
    body = await resp.json()
    assert resp.status == 422 and body["code"] == "invalid_callback_url", body
    resp = await client.patch("/admin/teams/payments", json={"callback_url": url}, headers=ADMIN)
    assert resp.status == 422
    resp = await client.post(
        "/api/v2/sms/send",
        data={
            "api_key": mint("payments"),
            "recipients": "0788000001",
            "message": "x",
            "dlrurl": url,
        },
    )
    assert resp.status == 400 and (await resp.json())["status"] == "error"
    with sqlite3.connect(settings.database) as conn:
        assert conn.execute("SELECT COUNT(*) FROM messages").fetchone() == (0,)
        assert conn.execute("SELECT callback_url FROM teams").fetchone() == (None,)


def test_the_policy() -> None:
    strict = CallbackPolicy()
    assert strict.url_refusal("https://hooks.team.internal/sms") is None
    assert strict.url_refusal("http://10.1.2.3/sms") is None  # private networks are fine
    allowed = CallbackPolicy((ipaddress.ip_network("127.0.0.0/8"),))
    assert allowed.url_refusal("http://127.0.0.1:9000/x") is None
    assert allowed.url_refusal("http://[::1]/x") is not None  # only what the list names
    everything = CallbackPolicy((ipaddress.ip_network("0.0.0.0/0"),), allow_loopback=True)
    assert everything.url_refusal("http://169.254.169.254/") is not None  # never link-local
    sandbox = CallbackPolicy(allow_loopback=True)
    assert sandbox.url_refusal("http://localhost:8080/x") is None


async def test_names_are_checked_against_what_they_resolve_to() -> None:
    resolver = GuardedResolver(CallbackPolicy())
    try:
        with pytest.raises(CallbackRefused, match="loopback"):
            await resolver.resolve("localhost", 80, socket.AF_UNSPEC)
    finally:
        await resolver.close()
    allowing = GuardedResolver(CallbackPolicy(allow_loopback=True))
    try:
        assert await allowing.resolve("localhost", 80, socket.AF_INET)
    finally:
        await allowing.close()
    # The operator's proxy is reachable whatever the callback rules: webhooks go through it.
    proxy_named = GuardedResolver(CallbackPolicy(), trusted=frozenset({"localhost"}))
    try:
        assert await proxy_named.resolve("localhost", 3128, socket.AF_INET)
    finally:
        await proxy_named.close()


async def test_checked_again_when_delivering(
    make_client: ClientFactory, provider: FakeProvider, receiver: Receiver, settings: Settings
) -> None:
    # A URL accepted while loopback was allowed is refused once it is not, without a call.
    client = await make_client()
    await create_team(client, "payments", callback_url=receiver.url)
    await client.close()
    client = await make_client(callback_allowed_networks=())
    resp = await client.post("/messages", json={"to": "0788000013", "text": "x"}, headers=SEND)
    assert resp.status == 201
    hooks: list[dict[str, Any]] = []
    for _ in range(200):
        listed = await client.get("/admin/webhooks", headers=ADMIN)
        hooks = (await listed.json())["data"]
        if hooks and hooks[0]["attempts"]:
            break
        await asyncio.sleep(0.02)
    assert hooks and hooks[0]["last_error"].startswith("refused: the URL points at a loopback")
    assert receiver.received == []
