"""SIGTERM in the middle of a send: the send completes and the server exits cleanly."""

from __future__ import annotations

import asyncio
import signal
import sqlite3
from pathlib import Path

import aiohttp

from .conftest import (
    FakeProvider,
    free_port,
    gateway_process,
    mint,
    serve_env,
)


async def test_sigterm_lets_an_in_flight_send_finish(
    tmp_path: Path, provider: FakeProvider
) -> None:
    port = free_port()
    database = tmp_path / "gateway.db"
    env = serve_env(str(database), port, provider.url)
    base = f"http://127.0.0.1:{port}"
    provider.delay = 1.0  # the provider is slow: the signal arrives while it works
    async with aiohttp.ClientSession() as http, gateway_process(env, port) as proc:
        async with http.post(
            f"{base}/admin/teams",
            json={"id": "payments"},
            headers={"Authorization": f"Bearer {mint('root', 'admin')}"},
        ) as resp:
            assert resp.status == 201
        pending = asyncio.ensure_future(
            http.post(
                f"{base}/messages",
                json={"to": "0788000001", "text": "x"},
                headers={"Authorization": f"Bearer {mint('payments')}"},
            )
        )
        async with asyncio.timeout(10):
            while not provider.calls:
                await asyncio.sleep(0.01)
        proc.send_signal(signal.SIGTERM)
        async with await pending as resp:
            body = await resp.json()
            assert resp.status == 201, body
        assert body["messages"][0]["status"] == "sent"
        async with asyncio.timeout(20):
            assert await proc.wait() == 0
        # It stopped accepting: a new connection is refused.
        try:
            async with http.get(f"{base}/healthz") as resp:
                raise AssertionError(f"still answering: {resp.status}")
        except aiohttp.ClientConnectionError:
            pass
    with sqlite3.connect(database) as conn:
        assert conn.execute("SELECT status FROM messages").fetchall() == [("sent",)]
