"""A campaign played as the provider plays it (`python -m bench.campaign`, docs/performance.md):
N recipients sent in requests of 1,000, then every delivery report fired at once, 64 at a time
(GET on each dlrurl, as the provider calls back), with the team's callback a fast receiver. The
same reports also go to a bare aiohttp handler that only answers 200: the intake's ceiling.

Prints the reports taken in a second by the gateway and by the bare handler, their ratio
(issue 25's target: >= 0.5), the webhooks a second the receiver saw, and any delivered twice.
"""

from __future__ import annotations

import asyncio
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
from yarl import URL

from .run import cpu_seconds, free_port, gateway_env, pg_database, process, sizes_main, token
from .servers import CAMPAIGN_TEXT

BATCH = 1000
REPORTERS = 64


async def fire(
    http: aiohttp.ClientSession, reports: list[tuple[str, str, str]], pid: int
) -> tuple[float, float]:
    """Every report, REPORTERS at a time; the seconds they took, and the CPU seconds a report
    of the server `pid` that took them. Each must be answered 200."""
    queue = list(reversed(reports))

    async def reporter() -> None:
        while queue:
            dlrurl, recipient, message_id = queue.pop()
            params = {
                "dnis": recipient,
                "username": "u",
                "password": "p",
                "command": "deliver",
                "dlvrMsgId": message_id,
                "dlvrMsgStat": "D",
            }
            async with http.get(dlrurl, params=params) as resp:
                await resp.read()
                assert resp.status == 200, resp.status

    cpu = cpu_seconds(pid)
    started = time.perf_counter()
    await asyncio.gather(*(reporter() for _ in range(REPORTERS)))
    seconds = time.perf_counter() - started
    return seconds, (cpu_seconds(pid) - cpu) / len(reports)


async def campaign(count: int, directory: Path, postgres: str | None) -> dict[str, Any]:
    provider_port, receiver_port, gateway_port = free_port(), free_port(), free_port()
    provider = f"http://127.0.0.1:{provider_port}"
    receiver = f"http://127.0.0.1:{receiver_port}"
    directory = Path(tempfile.mkdtemp(dir=directory))
    env = gateway_env(directory, f"{provider}/api/v2/sms/send", gateway_port)
    env["GATEWAY_CALLBACK_ALLOWED_NETWORKS"] = "127.0.0.0/8"
    if postgres is not None:
        env["GATEWAY_DATABASE"] = postgres
    base = f"http://127.0.0.1:{gateway_port}"
    headers = {"Authorization": f"Bearer {token('admin')}"}
    async with (
        process(
            ["-m", "bench.servers", "provider", str(provider_port)], provider_port, None, "/stats"
        ),
        process(
            ["-m", "bench.servers", "receiver", str(receiver_port)], receiver_port, None, "/stats"
        ) as bare_process,
        process(["-m", "gateway", "serve"], gateway_port, env) as gateway_process,
        aiohttp.ClientSession() as http,
    ):
        async with http.post(
            f"{base}/admin/teams",
            headers=headers,
            json={"id": "campaign", "name": "Campaign", "callback_url": f"{receiver}/hooks"},
        ) as resp:
            assert resp.status == 201, await resp.text()
        team = {"Authorization": f"Bearer {token('messages:send', 'campaign')}"}
        for first in range(0, count, BATCH):
            to = [f"250788{n:06d}" for n in range(first, min(count, first + BATCH))]
            async with http.post(
                f"{base}/messages", headers=team, json={"to": to, "text": CAMPAIGN_TEXT}
            ) as resp:
                assert resp.status == 201, await resp.text()
        async with http.get(f"{provider}/campaign") as resp:
            reports = [(str(u), str(r), str(m)) for u, r, m in await resp.json()]
        assert len(reports) == count
        bare = [
            (str(URL(u).with_host("127.0.0.1").with_port(receiver_port)), r, m)
            for u, r, m in reports
        ]
        bare_seconds, bare_cpu = await fire(http, bare, bare_process.pid)
        # (the gateway's CPU over its intake includes the webhooks it delivers meanwhile)
        gateway_seconds, gateway_cpu = await fire(http, reports, gateway_process.pid)
        while True:
            async with http.get(f"{receiver}/stats") as resp:
                stats: dict[str, Any] = await resp.json()
            if stats["count"] >= count:
                break
            await asyncio.sleep(0.2)
    span = stats["last"] - stats["first"]
    return {
        "intake": count / gateway_seconds,
        "bare": count / bare_seconds,
        "webhooks": stats["count"] / span if span > 0 else 0.0,
        "twice": stats["twice"],
        "cpu": gateway_cpu,
        "bare_cpu": bare_cpu,
    }


async def main_async(sizes: list[int], server: str) -> int:
    met = True
    for kind in ("SQLite", "PostgreSQL") if server != "off" else ("SQLite",):
        with tempfile.TemporaryDirectory() as tmp:
            for size in sizes:
                if kind == "SQLite":
                    result = await campaign(size, Path(tmp), None)
                else:
                    async with pg_database(server) as url:
                        result = await campaign(size, Path(tmp), url)
                ratio = result["intake"] / result["bare"]
                print(
                    f"{kind}, {size:,} recipients: reports {result['intake']:,.0f}/s, bare handler"
                    f" {result['bare']:,.0f}/s, ratio {ratio:.2f}; webhooks"
                    f" {result['webhooks']:,.0f}/s, {result['twice']} twice; CPU a report"
                    f" {result['cpu'] * 1e6:,.0f} µs (bare {result['bare_cpu'] * 1e6:,.0f} µs)",
                    flush=True,
                )
                met = met and ratio >= 0.5 and result["twice"] == 0
    return 0 if met else 3


def main() -> None:
    sizes_main("python -m bench.campaign", __doc__, main_async)


if __name__ == "__main__":
    main()
