"""Replicas whose clocks disagree (SPEC section 7, "One clock"): two real `serve` processes on
one PostgreSQL, one under libfaketime 90 s ahead and one 90 s behind (the monotonic clock left
alone), behave as one gateway: live sends are not swept, each webhook is delivered once, and
scheduled messages leave by the database's clock. Each replica measures its offset, exports it,
and reports not ready past 10 x GATEWAY_MAX_CLOCK_OFFSET."""

from __future__ import annotations

import asyncio
import contextlib
import glob
import os
import time
from collections import Counter
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from .conftest import (
    FakeProvider,
    free_port,
    gateway_process,
    ledger_mismatches,
    mint,
    query,
    serve_env,
)

pytestmark = pytest.mark.postgresql

# Tokens' own times are the identity provider's, checked against the replica's clock (30 s
# leeway): issued a while ago, so the replica 90 s behind takes them too.
ISSUED = int(time.time()) - 300
ADMIN = {"Authorization": f"Bearer {mint('root', 'admin', iat=ISSUED)}"}
SENDER = {"Authorization": f"Bearer {mint('payments', iat=ISSUED)}"}


def libfaketime() -> str:
    """Debian's libfaketime (.ci/run installs it); skipped on a laptop without it, never in CI."""
    found = sorted(glob.glob("/usr/lib/*/faketime/libfaketime.so.1"))
    if not found:
        if os.environ.get("CI") == "true":
            pytest.fail("libfaketime is missing (apt-get install faketime)")
        pytest.skip("libfaketime is not installed")
    return found[0]


def skewed(env: dict[str, str], offset: str) -> dict[str, str]:
    return {
        **env,
        "LD_PRELOAD": libfaketime(),
        "FAKETIME": offset,
        "FAKETIME_DONT_FAKE_MONOTONIC": "1",
        "FAKETIME_NO_CACHE": "1",
    }


@contextlib.asynccontextmanager
async def skewed_replicas(
    database: str,
    provider: FakeProvider,
    procs: list[asyncio.subprocess.Process] | None = None,
    **env: str,
) -> AsyncIterator[tuple[str, str]]:
    """Replica A 90 s ahead, replica B 90 s behind, on one database (their processes are
    appended to `procs`)."""
    ports = free_port(), free_port()
    starts = [
        gateway_process(skewed(serve_env(database, port, provider.url, **env), offset), port)
        for port, offset in zip(ports, ("+90s", "-90s"), strict=True)
    ]
    async with starts[0] as first, starts[1] as second:
        if procs is not None:
            procs += [first, second]
        yield f"http://127.0.0.1:{ports[0]}", f"http://127.0.0.1:{ports[1]}"


@contextlib.asynccontextmanager
async def slow_receiver(seconds: float) -> AsyncIterator[tuple[str, Counter[str]]]:
    """A team's webhook endpoint that takes `seconds` to answer; counts each webhook-id."""
    seen: Counter[str] = Counter()

    async def handle(request: web.Request) -> web.Response:
        seen[request.headers["webhook-id"]] += 1
        await asyncio.sleep(seconds)
        return web.Response(status=204)

    app = web.Application()
    app.router.add_post("/hooks", handle)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    try:
        yield str(server.make_url("/hooks")), seen
    finally:
        await server.close()


async def metric(http: aiohttp.ClientSession, base: str, name: str) -> float:
    async with http.get(f"{base}/metrics") as resp:
        for line in (await resp.text()).splitlines():
            if line.startswith(name + " "):
                return float(line.split()[1])
    raise AssertionError(f"no {name} at {base}")


async def test_skewed_replicas_sweep_nothing_live_and_deliver_each_webhook_once(
    database: str, provider: FakeProvider
) -> None:
    provider.delay = 7.0  # each provider call takes 7 s: many of B's sweeps happen meanwhile
    async with (
        slow_receiver(1.5) as (hook_url, seen),
        skewed_replicas(database, provider, lease_seconds="3", max_clock_offset="5") as (a, b),
        aiohttp.ClientSession() as http,
    ):
        async with http.post(
            f"{a}/admin/teams", json={"id": "payments", "callback_url": hook_url}, headers=ADMIN
        ) as resp:
            assert resp.status == 201, await resp.text()
        # The offsets are measured and exported; past 10 x 5 s each replica is not ready.
        assert 85 < -(await metric(http, a, "gateway_clock_offset_seconds")) < 95
        assert 85 < await metric(http, b, "gateway_clock_offset_seconds") < 95
        for base in (a, b):
            async with http.get(f"{base}/readyz") as resp:
                assert resp.status == 503
                assert "clock" in (await resp.json())["detail"]

        async def send(base: str, n: int, **extra: Any) -> tuple[int, dict[str, Any]]:
            body = {"to": [f"07880{n:05d}"], "text": "code 1234", **extra}
            async with http.post(f"{base}/messages", json=body, headers=SENDER) as resp:
                return resp.status, await resp.json()

        # Live sends on both replicas, each 7 s at the provider: none is swept to `unknown`.
        answers = await asyncio.gather(*(send((a, b)[n % 2], n) for n in range(10)))
        assert [status for status, _ in answers] == [201] * 10, answers
        assert {m["status"] for _, body in answers for m in body["messages"]} == {"sent"}

        # 40 webhooks (refused recipients), a receiver taking 1.5 s each, both workers busy:
        # neither replica takes the other's claim for lapsed.
        provider.delay = 0.0
        failed = await asyncio.gather(*(send((a, b)[n % 2], n * 100 + 13) for n in range(40)))
        assert {status for status, _ in failed} == {201}
        async with asyncio.timeout(30):
            while len(seen) < 40:
                await asyncio.sleep(0.2)
        await asyncio.sleep(3)  # time for a second delivery, were one to come
        assert len(seen) == 40 and set(seen.values()) == {1}, seen

        # Scheduled 6 s ahead through the replica 90 s behind, and through the one 90 s ahead
        # with a validity of 3 s: both leave at their time, neither early nor expired.
        calls_before = len(provider.calls)
        send_at = datetime.now(UTC) + timedelta(seconds=6)
        due = time.monotonic() + 6
        s1, _ = await send(b, 900, send_at=send_at.isoformat())
        s2, _ = await send(a, 901, send_at=send_at.isoformat(), validity_period=3)
        assert (s1, s2) == (202, 202)
        async with asyncio.timeout(20):
            while len(provider.calls) < calls_before + 2:
                await asyncio.sleep(0.1)
        assert min(provider.times[calls_before:]) >= due - 0.5
        async with http.get(f"{a}/messages?status=expired", headers=SENDER) as resp:
            assert (await resp.json())["data"] == []
    assert ledger_mismatches(database) == []


class DatabaseLink:
    """A TCP relay between the replicas and PostgreSQL that can be cut (every connection
    dropped, new ones refused) and mended: a database outage, for these processes only."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.cut = False
        self.port = 0
        self._writers: set[asyncio.StreamWriter] = set()
        self._server: asyncio.Server | None = None

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._client, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.cut:
            writer.close()
            return
        up_reader, up_writer = await asyncio.open_connection(*self.target)
        self._writers |= {writer, up_writer}

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            with contextlib.suppress(OSError):
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            dst.close()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))
        self._writers -= {writer, up_writer}

    def sever(self) -> None:
        self.cut = True
        for w in list(self._writers):
            w.close()

    async def stop(self) -> None:
        self.sever()
        if self._server is not None:
            self._server.close()


async def test_an_outage_longer_than_the_lease_sweeps_nothing_live(
    database: str, provider: FakeProvider
) -> None:
    """Both replicas lose the database for three lease lengths while sends are at the provider;
    once it is back, neither takes the other for dead: every send answers 201 `sent`, and no
    message was ever `unknown`."""
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(database)
    link = DatabaseLink((parts.hostname or "127.0.0.1", parts.port or 5432))
    await link.start()
    relayed = urlunsplit(parts._replace(netloc=f"{parts.username}@127.0.0.1:{link.port}"))
    ports = free_port(), free_port()
    starts = [
        gateway_process(serve_env(relayed, port, provider.url, lease_seconds="2"), port)
        for port in ports
    ]
    try:
        async with starts[0], starts[1], aiohttp.ClientSession() as http:
            a, b = (f"http://127.0.0.1:{p}" for p in ports)
            async with http.post(f"{a}/admin/teams", json={"id": "payments"}, headers=ADMIN) as r:
                assert r.status == 201
            provider.delay = 10.0

            async def send(base: str, n: int) -> int:
                body = {"to": [f"07881{n:05d}"], "text": "code 1234"}
                async with http.post(f"{base}/messages", json=body, headers=SENDER) as resp:
                    return resp.status

            sends = asyncio.gather(*(send((a, b)[n % 2], n) for n in range(6)))
            async with asyncio.timeout(5):
                while len(provider.calls) < 6:  # all reserved, all at the provider
                    await asyncio.sleep(0.05)
            link.sever()
            await asyncio.sleep(6)  # three lease lengths without a renewal, anywhere
            link.cut = False
            assert await sends == [201] * 6
    finally:
        await link.stop()
    rows = query(database, "SELECT status, events FROM messages")
    assert [r[0] for r in rows] == ["sent"] * 6
    assert not [r for r in rows if "unknown" in r[1]], rows
    assert ledger_mismatches(database) == []


async def test_skewed_replicas_keep_the_rate_as_the_dispatchers_turn_changes_hands(
    database: str, provider: FakeProvider
) -> None:
    """GATEWAY_PROVIDER_MAX_RATE across replicas 180 s apart: the dispatcher's turn is the
    database's clock, so neither takes it while the other holds it, and when its holder is
    killed the other takes over without a second that holds more calls than the rate."""
    from .test_queue_processes import (
        calls_per_recipient,
        dispatcher_pid,
        drained,
        kill_the_dispatcher,
        times_per_second,
    )

    rate = 5
    procs: list[asyncio.subprocess.Process] = []
    async with (
        aiohttp.ClientSession() as http,
        skewed_replicas(
            database,
            provider,
            procs,
            provider_max_rate=str(rate),
            lease_seconds="3",
            max_clock_offset="100",
        ) as (a, b),
    ):
        async with http.post(f"{a}/admin/teams", json={"id": "school"}, headers=ADMIN) as r:
            assert r.status == 201
        school = {"Authorization": f"Bearer {mint('school', iat=ISSUED)}"}
        for n in range(30):
            body = {"to": [f"07882{n:05d}"], "text": "Term results", "queue": True}
            async with http.post(f"{(a, b)[n % 2]}/messages", json=body, headers=school) as r:
                assert r.status == 202, await r.text()
        async with asyncio.timeout(20):
            while len(provider.calls) < 8:
                await asyncio.sleep(0.05)
        pid = await kill_the_dispatcher(database, procs)
        await drained(database, within=60)
        assert dispatcher_pid(database) != pid
    assert max(calls_per_recipient(provider).values()) == 1
    assert times_per_second(provider) <= rate
    assert ledger_mismatches(database) == []
