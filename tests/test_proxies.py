"""A real `sms-gateway serve` behind a company proxy: the provider call and the webhooks go
through it (HTTP_PROXY / HTTPS_PROXY), hosts under NO_PROXY go direct, and the proxy's
password never reaches the log."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from .conftest import FakeProvider, Receiver, free_port, gateway_process, mint, serve_env
from .proxy import ForwardProxy

ADMIN = {"Authorization": f"Bearer {mint('root', 'admin')}"}
SEND = {"Authorization": f"Bearer {mint('payments')}"}
PROXY_PASSWORD = "proxy-pass-4711"


@pytest.fixture
async def proxy() -> AsyncIterator[ForwardProxy]:
    running = await ForwardProxy().start()
    yield running
    await running.stop()


async def send_and_get_webhook(
    database: str,
    port: int,
    env: dict[str, str],
    provider: FakeProvider,
    receiver: Receiver,
    stderr_path: Path,
) -> None:
    base = f"http://127.0.0.1:{port}"
    provider.dlr = "after"
    with stderr_path.open("wb") as stderr:
        async with gateway_process(env, port, stderr=stderr), aiohttp.ClientSession() as http:
            async with http.post(
                f"{base}/admin/teams",
                json={"id": "payments", "callback_url": receiver.url},
                headers=ADMIN,
            ) as resp:
                assert resp.status == 201, await resp.text()
            async with http.post(
                f"{base}/messages", json={"to": "0788000001", "text": "hi"}, headers=SEND
            ) as resp:
                assert resp.status == 201, await resp.text()
                assert (await resp.json())["messages"][0]["status"] == "sent"
            await receiver.wait_for(1)
    event = json.loads(receiver.received[0][1])
    assert event["type"] == "message.delivered"


async def test_provider_call_and_webhooks_go_through_the_proxy(
    tmp_path: Path, provider: FakeProvider, receiver: Receiver, proxy: ForwardProxy
) -> None:
    port = free_port()
    env = serve_env(str(tmp_path / "gateway.db"), port, provider.url)
    env["HTTP_PROXY"] = f"http://ops:{PROXY_PASSWORD}@{proxy.url.removeprefix('http://')}"
    await send_and_get_webhook(
        env["GATEWAY_DATABASE"], port, env, provider, receiver, tmp_path / "stderr"
    )
    assert f"POST {provider.url}" in proxy.seen  # the send, in the absolute form of a proxy
    assert any(line.startswith(f"POST {receiver.url}") for line in proxy.seen)  # the webhook
    assert all(auth and auth.startswith("Basic ") for auth in proxy.authorizations)
    assert len(provider.calls) == 1
    assert PROXY_PASSWORD not in (tmp_path / "stderr").read_text()


async def test_no_proxy_hosts_go_direct(
    tmp_path: Path, provider: FakeProvider, receiver: Receiver, proxy: ForwardProxy
) -> None:
    port = free_port()
    env = serve_env(str(tmp_path / "gateway.db"), port, provider.url)
    env.update({"HTTP_PROXY": proxy.url, "NO_PROXY": "localhost,127.0.0.1"})
    await send_and_get_webhook(
        env["GATEWAY_DATABASE"], port, env, provider, receiver, tmp_path / "stderr"
    )
    assert proxy.seen == [] and len(provider.calls) == 1
