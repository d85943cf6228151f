"""Shared fixtures: a fake provider on a real port, the gateway through create_app, JWT minting."""

from __future__ import annotations

import asyncio
import json
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import jwt
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from gateway.app import create_app
from gateway.clock import Clock, utcnow
from gateway.settings import Settings

JWT_SECRET = "test-secret-that-is-long-enough-for-hs256-0123456789"
API_KEY = "prov-api-key-7f3a9c"
USERNAME = "acme-account"
PASSWORD = "prov-password-s3cr3t-91"

ClientFactory = Callable[..., Awaitable[TestClient[web.Request, web.Application]]]


def mint(
    sub: str | None = "payments",
    scope: Any = "messages:send messages:read",
    *,
    secret: Any = JWT_SECRET,
    algorithm: str = "HS256",
    headers: dict[str, Any] | None = None,
    **claims: Any,
) -> str:
    """A token as a team's identity provider would issue it."""
    now = int(time.time())
    body: dict[str, Any] = {
        "sub": sub,
        "scope": scope,
        "iat": now,
        "exp": now + 600,
        "aud": "sms-gateway",
    }
    body.update(claims)
    body = {k: v for k, v in body.items() if v is not None}
    return jwt.encode(body, secret, algorithm=algorithm, headers=headers)


def auth(token: str) -> dict[str, str]:
    """The Authorization header for a token."""
    return {"Authorization": f"Bearer {token}"}


def free_port() -> int:
    """A port nothing listens on (for 'connection refused')."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class FakeProvider:
    """The provider played by a real aiohttp server; `mode` chooses how it answers."""

    mode: str = "success"
    calls: list[dict[str, str]] = field(default_factory=list)
    failed_suffix: str = "13"
    charge_failed: bool = False
    cost: Any = 75
    delay: float = 0.0
    url: str = ""
    next_id: int = 1000
    error_for: str | None = None  # a call carrying this recipient is refused whole

    async def handle(self, request: web.Request) -> web.StreamResponse:
        form = {k: str(v) for k, v in (await request.post()).items()}
        self.calls.append(form)
        if self.delay:
            await asyncio.sleep(self.delay)
        if self.mode == "error" or self.error_for in form["recipients"].split(","):
            return web.json_response({"status": "error", "message": "Insufficient balance"})
        if self.mode == "http401":
            return web.json_response(
                {"status": "error", "message": "Invalid credentials"}, status=401
            )
        if self.mode == "http500":
            return web.Response(status=500, text="Internal Server Error")
        if self.mode == "html":
            return web.Response(
                text="<html><body>Bad gateway</body></html>", content_type="text/html"
            )
        if self.mode == "garbage":
            return web.Response(
                text='{"status": "success", "response": [', content_type="text/json"
            )
        if self.mode == "drop":
            assert request.transport is not None
            request.transport.close()
            return web.Response()
        answers = []
        for recipient in form["recipients"].split(","):
            self.next_id += 1
            failed = recipient.endswith(self.failed_suffix)
            answers.append(
                {
                    "status": "failed" if failed else "sent",
                    "messageid": str(self.next_id),
                    "recipient": recipient,
                    "cost": self.cost if (not failed or self.charge_failed) else 0,
                }
            )
        if self.mode == "partial":
            answers = answers[:-1]
        return web.json_response(
            {
                "status": "success",
                "totalmessages": len(answers),
                "totalcost": 0,
                "unit": "RWF",
                "response": answers,
            }
        )


@pytest.fixture
async def provider() -> AsyncIterator[FakeProvider]:
    """A running fake provider."""
    fake = FakeProvider()
    app = web.Application()
    app.router.add_post("/api/v2/sms/send", fake.handle)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    fake.url = str(server.make_url("/api/v2/sms/send"))
    yield fake
    await server.close()


@pytest.fixture
def settings(tmp_path: Path, provider: FakeProvider) -> Settings:
    """Settings for a gateway in front of the fake provider, with a real SQLite file."""
    return Settings(
        database=str(tmp_path / "gateway.db"),
        provider_url=provider.url,
        provider_api_key=API_KEY,
        provider_username=USERNAME,
        provider_password=PASSWORD,
        provider_timeout=2.0,
        public_url="http://gateway.test:8080",
        jwt_secret=JWT_SECRET,
    )


@pytest.fixture
def make_client(
    aiohttp_client: Callable[..., Awaitable[TestClient[web.Request, web.Application]]],
    settings: Settings,
) -> ClientFactory:
    """Start the gateway (create_app) with the settings, optionally changed."""

    async def start(
        clock: Clock = utcnow, **changes: Any
    ) -> TestClient[web.Request, web.Application]:
        the_settings = replace(settings, **changes) if changes else settings
        the_settings.validate()
        return await aiohttp_client(create_app(the_settings, clock=clock))

    return start


async def create_team(
    client: TestClient[web.Request, web.Application], team_id: str, **fields: Any
) -> dict[str, Any]:
    """Register a team through the admin API."""
    resp = await client.post(
        "/admin/teams", json={"id": team_id, **fields}, headers=auth(mint("root", "admin"))
    )
    assert resp.status == 201, await resp.text()
    body: dict[str, Any] = await resp.json()
    return body


@pytest.fixture
async def client(make_client: ClientFactory) -> TestClient[web.Request, web.Application]:
    """A gateway with teams `payments` and `alerts` registered."""
    c = await make_client()
    await create_team(c, "payments", name="Payments")
    await create_team(c, "alerts", name="Alerts")
    return c


async def problem(resp: Any, status: int, code: str) -> dict[str, Any]:
    """Assert an RFC 9457 answer with this status and code; return its body."""
    text = await resp.text()
    assert resp.status == status, text
    assert resp.headers["Content-Type"].startswith("application/problem+json")
    body: dict[str, Any] = json.loads(text)
    assert body["status"] == status
    assert body["code"] == code, body
    assert body["title"] and body["detail"] and body["type"]
    return body


def ledger_mismatches(database: str) -> list[str]:
    """Where the usage counters differ from the sum of the messages' charges (empty = exact)."""
    import sqlite3

    with sqlite3.connect(database) as conn:
        counters = {
            (team, period): (messages, segments, cost)
            for team, period, messages, segments, cost in conn.execute(
                "SELECT team_id, period, messages, segments, cost FROM usage"
            )
            if (messages, segments, cost) != (0, 0, 0)
        }
        sums: dict[tuple[str, str], tuple[int, int, int]] = {}
        for column in ("day", "month"):
            for team, period, messages, segments, cost in conn.execute(
                f"SELECT team_id, {column}, SUM(charged_segments > 0 OR cost > 0),"  # noqa: S608
                " SUM(charged_segments), SUM(cost) FROM messages GROUP BY team_id, 2"
            ):
                if (messages, segments, cost) != (0, 0, 0):
                    sums[(team, period)] = (messages, segments, cost)
    return [
        f"{key}: counters {counters.get(key)} != messages {sums.get(key)}"
        for key in sorted(set(counters) | set(sums))
        if counters.get(key) != sums.get(key)
    ]
