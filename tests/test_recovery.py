"""A gateway killed mid-send (SIGKILL) recovers at its next start: nothing stays `sending`."""

from __future__ import annotations

import asyncio
import contextlib
import signal
from pathlib import Path

import aiohttp
from aiohttp import web
from aiohttp.test_utils import TestServer

from .conftest import free_port, gateway_process, ledger_mismatches, mint, serve_env


async def test_killed_mid_send_then_restarted(tmp_path: Path) -> None:
    calls = 0
    answered = asyncio.Event()

    async def stuck_provider(request: web.Request) -> web.Response:
        nonlocal calls
        calls += 1
        answered.set()
        await asyncio.sleep(60)  # the gateway dies before this answers
        return web.json_response({"status": "success", "response": []})

    provider_app = web.Application()
    provider_app.router.add_post("/api/v2/sms/send", stuck_provider)
    provider = TestServer(provider_app, host="127.0.0.1")
    await provider.start_server()
    port = free_port()
    database = str(tmp_path / "gateway.db")
    env = serve_env(
        database, port, str(provider.make_url("/api/v2/sms/send")), provider_timeout="60"
    )
    base = f"http://127.0.0.1:{port}"
    send = {"Authorization": f"Bearer {mint('payments')}", "Idempotency-Key": "otp-77"}
    body = {"to": "0788000001", "text": "Your code is 1234"}
    try:
        async with aiohttp.ClientSession() as http:
            async with gateway_process(env, port) as proc:
                async with http.post(
                    f"{base}/admin/teams",
                    json={"id": "payments"},
                    headers={"Authorization": f"Bearer {mint('root', 'admin')}"},
                ) as resp:
                    assert resp.status == 201
                pending = asyncio.ensure_future(
                    http.post(f"{base}/messages", json=body, headers=send)
                )
                await asyncio.wait_for(answered.wait(), 10)
                proc.send_signal(signal.SIGKILL)
                await proc.wait()
                with contextlib.suppress(aiohttp.ClientError):
                    (await pending).release()
            async with gateway_process(env, port):
                async with http.post(f"{base}/messages", json=body, headers=send) as resp:
                    replay = await resp.json()
                    assert resp.status == 504, replay
                    assert resp.headers["Idempotent-Replayed"] == "true"
                assert replay["code"] == "provider_timeout"
                [message] = replay["messages"]
                assert message["status"] == "unknown" and message["cost"] == 75
                async with http.get(f"{base}/messages/{message['id']}", headers=send) as resp:
                    stored = await resp.json()
                assert stored["status"] == "unknown"
                assert stored["error"]["code"] == "interrupted"
                async with http.get(f"{base}/usage", headers=send) as resp:
                    assert (await resp.json())["day"]["used"] == 1  # unknown stays charged
        assert calls == 1  # the replay did not send again
        assert ledger_mismatches(database) == []
    finally:
        await provider.close()
