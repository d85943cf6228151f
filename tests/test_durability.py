"""Webhooks survive a hard stop: a gateway killed with SIGKILL delivers them after it restarts."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path

import aiohttp
from standardwebhooks.webhooks import Webhook

from .conftest import (
    API_KEY,
    JWT_SECRET,
    PASSWORD,
    FakeProvider,
    Receiver,
    free_port,
    gateway_process,
    mint,
    serve_env,
)


async def test_pending_webhooks_are_delivered_after_sigkill(
    tmp_path: Path, provider: FakeProvider, receiver: Receiver
) -> None:
    port = free_port()
    env = serve_env(
        str(tmp_path / "gateway.db"),
        port,
        provider.url,
        webhook_retry_schedule=",".join(["0"] + ["0.2"] * 20),
        log_level="DEBUG",
    )
    base = f"http://127.0.0.1:{port}"
    admin = {"Authorization": f"Bearer {mint('root', 'admin')}"}
    send = {"Authorization": f"Bearer {mint('payments')}"}
    receiver.failures = 10**6  # the team's receiver is down
    provider.dlr = "after"
    log_path = tmp_path / "gateway.log"
    with log_path.open("wb") as log:
        async with aiohttp.ClientSession() as http:
            async with gateway_process(env, port, stderr=log) as proc:
                async with http.post(
                    f"{base}/admin/teams",
                    headers=admin,
                    json={"id": "payments", "callback_url": receiver.url},
                ) as r:
                    secret = (await r.json())["webhook_secret"]
                async with http.post(
                    f"{base}/messages",
                    headers=send,
                    json={"to": ["0788000001", "0788000099"], "text": "hi"},
                ) as r:
                    assert r.status == 201
                await provider.settle_reports()
                assert provider.reports == [200, 200]
                await receiver.wait_for(4)  # at least two failed attempts each, or so
                proc.send_signal(signal.SIGKILL)
                await proc.wait()
            failed_ids = {headers["webhook-id"] for headers, _ in receiver.received}
            assert len(failed_ids) == 2
            receiver.failures = 0  # the receiver is back
            seen = len(receiver.received)
            async with gateway_process(env, port, stderr=log):
                async with asyncio.timeout(10):
                    while True:
                        delivered = {h["webhook-id"] for h, _ in receiver.received[seen:]}
                        if delivered == failed_ids:
                            break
                        await asyncio.sleep(0.05)
                for headers, body in receiver.received[seen:]:
                    Webhook(secret).verify(body, headers)
                async with asyncio.timeout(10):
                    while True:  # the attempt is recorded just after the receiver answered
                        async with http.get(
                            f"{base}/admin/webhooks?status=delivered", headers=admin
                        ) as r:
                            hooks = (await r.json())["data"]
                        if {h["id"] for h in hooks} == failed_ids:
                            break
                        await asyncio.sleep(0.05)
                async with http.get(f"{base}/messages?status=delivered", headers=send) as r:
                    assert len((await r.json())["data"]) == 1
    logged = log_path.read_text()
    assert "/dlr/" in logged  # the access log saw the reports...
    for secret_value in (PASSWORD, API_KEY, JWT_SECRET, secret):
        assert secret_value not in logged  # ...and no secret, even at DEBUG
