"""The queue drain run of the harness (`python -m bench.run`, docs/performance.md).

A gateway with GATEWAY_PROVIDER_MAX_RATE set drains a large queue (10,000 messages, 100 a
provider call) while the same direct-send load as the main run hits it. In alternating rounds:
direct sends alone, then direct sends while the queue drains. The fake provider records when
each queued call arrived and every queued recipient, so the report gives the rate the queue
really held (calls a second over the drain, and the most in any one second), duplicates, and the
direct sends' p99 with the queue against without.
"""

from __future__ import annotations

import asyncio
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

from bench.run import (
    BENCH_TEAM,
    Result,
    gateway_env,
    load,
    median_round,
    one_recipient,
    process,
    subprocess_run,
)
from bench.servers import QUEUED_TEXT
from gateway.store.sqlite import SqliteStore

PER_REQUEST = 1000  # recipients in one queued request (the API's most)


@dataclass
class Drain:
    """What one drain measured."""

    messages: int
    calls: int
    rate: float  # calls a second from the first queued call to the last
    busiest_second: int  # the most queued calls that arrived within any one second
    tightest: float  # the shortest time over which `rate` + 1 queued calls arrived


@dataclass
class DrainReport:
    """The drain runs, round by round."""

    target_rate: float
    alone: list[Result]
    with_queue: list[Result]
    drains: list[Drain]
    duplicates: int

    def lines(self) -> list[str]:
        """The report's rows."""
        rates = " ".join(f"{d.rate:.2f}" for d in self.drains)
        busiest = max(d.busiest_second for d in self.drains)
        tightest = min(d.tightest for d in self.drains)
        p99s = self.p99_ratios()
        return [
            median_round(self.alone).line(),
            median_round(self.with_queue).line(),
            f"queue drain: {self.drains[0].messages:,} messages in {self.drains[0].calls} calls"
            f" at GATEWAY_PROVIDER_MAX_RATE={self.target_rate:g}; held rate, round by round:"
            f" {rates} calls/s; busiest second {busiest} calls (the tightest"
            f" {int(self.target_rate) + 1} arrived over {tightest * 1000:.0f} ms);"
            f" {self.duplicates} duplicates",
            "direct p99 with the queue / without, round by round: "
            + " ".join(f"{v:.2f}" for v in p99s),
        ]

    def p99_ratios(self) -> list[float]:
        """Direct sends' p99 while the queue drained / their p99 alone, each round."""
        return [q.pct(0.99) / a.pct(0.99) for q, a in zip(self.with_queue, self.alone, strict=True)]

    def targets(self) -> list[tuple[str, bool, str]]:
        """(name, met, figure) of each drain target."""
        rate = statistics.median(d.rate for d in self.drains)
        off = abs(rate / self.target_rate - 1)
        busiest = max(d.busiest_second for d in self.drains)
        p99 = statistics.median(self.p99_ratios())
        return [
            ("queue rate within 5 % of the setting", off <= 0.05, f"{rate:.2f}/s ({off:.1%} off)"),
            ("no second above the rate", busiest <= self.target_rate, f"{busiest} calls"),
            ("queue 0 duplicates", self.duplicates == 0, str(self.duplicates)),
            ("direct p99 with queue <= 1.5 x without", p99 <= 1.5, f"{p99:.2f}"),
        ]


async def _stats(http: aiohttp.ClientSession, provider_port: int) -> dict[str, Any]:
    async with http.get(f"http://127.0.0.1:{provider_port}/stats") as resp:
        stats: dict[str, Any] = await resp.json()
        return stats


async def _enqueue(
    http: aiohttp.ClientSession, base: str, headers: dict[str, str], first: int, count: int
) -> None:
    for start in range(first, first + count, PER_REQUEST):
        to = [f"0789{n:06d}" for n in range(start, min(start + PER_REQUEST, first + count))]
        body = {"to": to, "text": QUEUED_TEXT, "queue": True}
        async with http.post(f"{base}/messages", json=body, headers=headers) as resp:
            assert resp.status == 202, await resp.text()


async def _drained(
    http: aiohttp.ClientSession, provider_port: int, recipients: int
) -> dict[str, Any]:
    """The provider's stats once it has seen `recipients` queued recipients (10 minutes at most)."""
    async with asyncio.timeout(600):
        while True:
            stats = await _stats(http, provider_port)
            if stats["recipients"] >= recipients:
                return stats
            await asyncio.sleep(0.2)


def _tightest(times: list[float], calls: int) -> float:
    """The shortest span over which `calls` of these arrived (seconds)."""
    ordered = sorted(times)
    spans = [ordered[i + calls - 1] - ordered[i] for i in range(len(ordered) - calls + 1)]
    return min(spans, default=float("nan"))


def _busiest_second(times: list[float]) -> int:
    ordered = sorted(times)
    most, low = 0, 0
    for high, t in enumerate(ordered):
        while ordered[low] <= t - 1.0:
            low += 1
        most = max(most, high - low + 1)
    return most


async def drain_runs(
    tmp: Path,
    provider_port: int,
    port: int,
    headers: dict[str, str],
    *,
    rate: float,
    messages: int,
    rounds: int,
    concurrency: int,
    seconds: float,
    log_level: str | None,
) -> DrainReport:
    """Run the drain rounds against a fresh gateway on SQLite; the report."""
    provider_url = f"http://127.0.0.1:{provider_port}/api/v2/sms/send"
    env = gateway_env(tmp / "drain", provider_url, port, log_level)
    env["GATEWAY_PROVIDER_MAX_RATE"] = f"{rate:g}"
    Path(env["GATEWAY_DATABASE"]).parent.mkdir()
    store = SqliteStore(env["GATEWAY_DATABASE"])
    await store.open()
    await store.close()
    assert subprocess_run(BENCH_TEAM, env) == 0, "could not create the bench team (drain)"
    base = f"http://127.0.0.1:{port}"
    url = f"{base}/messages"
    alone: list[Result] = []
    with_queue: list[Result] = []
    drains: list[Drain] = []
    async with process(["-m", "gateway", "serve"], port, env), aiohttp.ClientSession() as http:
        for round_ in range(rounds):
            alone.append(
                await load(
                    "direct sends, no queue", url, one_recipient, headers, concurrency, seconds
                )
            )
            before = await _stats(http, provider_port)
            await _enqueue(http, base, headers, round_ * messages, messages)
            with_queue.append(
                await load(
                    f"direct sends while {messages:,} queued drain",
                    url,
                    one_recipient,
                    headers,
                    concurrency,
                    seconds,
                )
            )
            stats = await _drained(http, provider_port, before["recipients"] + messages)
            times = stats["times"][len(before["times"]) :]
            drains.append(
                Drain(
                    messages,
                    len(times),
                    (len(times) - 1) / (times[-1] - times[0]) if len(times) > 1 else float("nan"),
                    _busiest_second(times),
                    _tightest(times, int(rate) + 1),
                )
            )
        duplicates = int((await _stats(http, provider_port))["duplicates"])
    return DrainReport(rate, alone, with_queue, drains, duplicates)
