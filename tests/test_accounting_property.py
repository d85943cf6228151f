"""Property: after any sequence of sends and provider outcomes, the counters equal the sum of
the messages' charges, and no limit is passed."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.app import create_app
from gateway.settings import Settings

from .conftest import JWT_SECRET, FakeProvider, auth, ledger_mismatches, mint

OUTCOMES = ["success", "error", "http401", "http500", "html", "garbage", "partial"]

step = st.fixed_dictionaries(
    {
        "recipients": st.integers(1, 4),
        "segments": st.integers(1, 3),
        "mode": st.sampled_from(OUTCOMES),
        "failed_suffix": st.sampled_from(["1", "2", "none"]),
        "charge_failed": st.booleans(),
        "cost_share": st.sampled_from([0.0, 0.5, 1.0]),  # of the 75 RWF/segment estimate
    }
)
limits = st.fixed_dictionaries(
    {
        "daily_limit": st.one_of(st.none(), st.integers(0, 25)),
        "monthly_limit": st.one_of(st.none(), st.integers(0, 40)),
        "monthly_budget": st.one_of(st.none(), st.integers(0, 3000)),
    }
)


async def scenario(
    directory: Path, team_limits: dict[str, Any], steps: list[dict[str, Any]]
) -> None:
    fake = FakeProvider()
    provider_app = web.Application()
    provider_app.router.add_post("/api/v2/sms/send", fake.handle)
    provider = TestServer(provider_app, host="127.0.0.1")
    await provider.start_server()
    database = str(directory / "gateway.db")
    config = Settings(
        database=database,
        provider_url=str(provider.make_url("/api/v2/sms/send")),
        provider_api_key="k",
        provider_username="u",
        provider_password="p",
        provider_timeout=2.0,
        provider_batch_size=2,
        jwt_secret=JWT_SECRET,
    )
    client = TestClient(TestServer(create_app(config), host="127.0.0.1"))
    await client.start_server()
    try:
        resp = await client.post(
            "/admin/teams",
            json={"id": "payments", **team_limits},
            headers=auth(mint("root", "admin")),
        )
        assert resp.status == 201
        headers = auth(mint("payments"))
        number = 0
        for s in steps:
            fake.mode = s["mode"]
            fake.failed_suffix = s["failed_suffix"]
            fake.charge_failed = s["charge_failed"]
            fake.cost = int(75 * s["segments"] * s["cost_share"])
            to = []
            for _ in range(s["recipients"]):
                number += 1
                to.append(f"0788{number:06d}")
            resp = await client.post(
                "/messages", headers=headers, json={"to": to, "text": "a" * (153 * s["segments"])}
            )
            assert resp.status in (201, 429, 502, 504), await resp.text()
        assert ledger_mismatches(database) == []
        usage = await (await client.get("/usage", headers=headers)).json()
        for period, limit_name, used_name in (
            ("day", "daily_limit", "used"),
            ("month", "monthly_limit", "used"),
            ("month", "monthly_budget", "cost"),
        ):
            limit = team_limits[limit_name]
            if limit is not None:
                assert usage[period][used_name] <= limit
    finally:
        await client.close()
        await provider.close()


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(team_limits=limits, steps=st.lists(step, min_size=1, max_size=10))
def test_counters_equal_the_messages_charges(
    tmp_path_factory: pytest.TempPathFactory,
    team_limits: dict[str, Any],
    steps: list[dict[str, Any]],
) -> None:
    asyncio.run(scenario(tmp_path_factory.mktemp("ledger"), team_limits, steps))
