"""The benchmark harness: `python -m bench.run` (see docs/performance.md).

Starts a fast fake provider, a bare aiohttp forwarder and two gateways (SQLite on disk, JWT on,
quotas on): one on an empty database and one on a database preloaded with a million messages.
Drives each with the same load generator (N concurrent clients, one recipient per request, a
fixed duration) in alternating rounds, so machine noise hits all three alike, and prints sends/s,
p50, p99, the gateways' peak RSS and the ratios. Then it measures a `GET /messages` page and one
1,000-recipient send on the preloaded gateway.

With a PostgreSQL server (`--postgres`, on by default at 127.0.0.1:5432), the same run also
drives a gateway on a throwaway PostgreSQL database in the same alternating rounds (one replica),
then two replicas on that database sharing the load, then preloads it with as many messages as
the SQLite one and measures the `GET /messages` page there too.

Last, a gateway with GATEWAY_PROVIDER_MAX_RATE drains a queue of 10,000 messages while direct
sends run (bench/drain.py): the rate held, duplicates, and the direct sends' p99 against theirs
with no queue.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import random
import sqlite3
import statistics
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import jwt

from gateway.platform.loop import install_fast_loop
from gateway.store.sqlite import SqliteStore

SECRET = "bench-secret-bench-secret-bench-secret-0123"
TEAM = "bench"


@dataclass
class Result:
    """What one load run measured."""

    name: str
    requests: int
    errors: int
    seconds: float
    latencies: list[float]
    cpu: float | None = None  # the server process's CPU seconds a request (from /proc)

    @property
    def rate(self) -> float:
        """Successful requests a second."""
        return (self.requests - self.errors) / self.seconds

    def pct(self, q: float) -> float:
        """The q-quantile latency in milliseconds."""
        if not self.latencies:
            return float("nan")
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000

    def line(self) -> str:
        """A row of the report."""
        cpu = f"  CPU {self.cpu * 1e6:>4.0f} µs/request" if self.cpu is not None else ""
        return (
            f"{self.name:<34} {self.rate:>9.0f}/s  p50 {self.pct(0.50):>7.2f} ms  "
            f"p99 {self.pct(0.99):>7.2f} ms  errors {self.errors}{cpu}"
        )


def cpu_seconds(pid: int) -> float:
    """The CPU time (user + system) process `pid` has used, from /proc/PID/stat (Linux)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    """A free loopback port."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def token(scope: str = "messages:send messages:read", subject: str = TEAM) -> str:
    """A long-lived bench token for the team (or `subject`)."""
    return jwt.encode(
        {"sub": subject, "scope": scope, "exp": int(time.time()) + 86400, "aud": "sms-gateway"},
        SECRET,
        algorithm="HS256",
    )


@contextlib.asynccontextmanager
async def process(
    args: list[str], port: int, env: dict[str, str] | None = None, ready_path: str = "/healthz"
) -> AsyncIterator[asyncio.subprocess.Process]:
    """A server subprocess, yielded once it answers on `port`."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        *args,
        env=env,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
    try:
        async with asyncio.timeout(60), aiohttp.ClientSession() as http:
            while True:
                with contextlib.suppress(aiohttp.ClientError):
                    async with http.get(f"http://127.0.0.1:{port}{ready_path}") as resp:
                        if resp.status < 500:
                            break
                await asyncio.sleep(0.05)
        yield proc
    finally:
        if proc.returncode is None:
            proc.terminate()
            try:
                async with asyncio.timeout(20):
                    await proc.wait()
            except TimeoutError:
                proc.kill()
                await proc.wait()


def peak_rss_mb(pid: int) -> float:
    """The process's peak resident set size (VmHWM), in MB."""
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return float("nan")


async def load(
    name: str,
    url: str,
    body: Callable[[int], dict[str, Any]],
    headers: dict[str, str],
    concurrency: int,
    duration: float,
    method: str = "POST",
    expect: int = 201,
    pid: int | None = None,
) -> Result:
    """`concurrency` clients sending back to back for `duration` seconds; with `pid`, the
    server's CPU time a request over the run (read from /proc around it)."""
    latencies: list[float] = []
    errors = 0
    sent = 0
    counter = iter(range(10**9))
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector, headers=headers) as http:
        warm_until = time.perf_counter() + min(1.0, duration / 5)
        while time.perf_counter() < warm_until:  # connections and caches warm
            async with http.request(method, url, json=body(next(counter))) as resp:
                await resp.read()
        deadline = time.perf_counter() + duration

        async def client() -> None:
            nonlocal errors, sent
            while time.perf_counter() < deadline:
                started = time.perf_counter()
                async with http.request(
                    method, url, json=body(next(counter)) if method == "POST" else None
                ) as resp:
                    await resp.read()
                    ok = resp.status == expect
                latencies.append(time.perf_counter() - started)
                sent += 1
                errors += not ok

        cpu_before = cpu_seconds(pid) if pid is not None else 0.0
        started = time.perf_counter()
        await asyncio.gather(*(client() for _ in range(concurrency)))
        seconds = time.perf_counter() - started
        cpu = (cpu_seconds(pid) - cpu_before) / max(sent, 1) if pid is not None else None
    return Result(name, sent, errors, seconds, latencies, cpu)


def one_recipient(n: int) -> dict[str, Any]:
    """A one-time-password sized send to a different number each time."""
    return {"to": [f"0788{n % 1_000_000:06d}"], "text": f"Your code is {n % 10000:04d}"}


def preload(database: str, count: int) -> float:
    """Insert `count` messages (and matching usage counters) straight into SQLite; seconds."""
    started = time.perf_counter()
    conn = sqlite3.connect(database)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=OFF")
    day, month = "2026-01-15", "2026-01"
    base_ms = int(time.time() * 1000) - 30 * 86400 * 1000
    alphabet = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"

    def ulid(ms: int, rnd: int) -> str:
        out = []
        for value, length in ((ms, 10), (rnd, 16)):
            chars = []
            for _ in range(length):
                value, rem = divmod(value, 32)
                chars.append(alphabet[rem])
            out.append("".join(reversed(chars)))
        return "".join(out)

    rng = random.Random(7)
    statuses = ("delivered", "delivered", "delivered", "sent", "failed", "undelivered")
    batch_size = 50_000
    for start in range(0, count, batch_size):
        rows = []
        for n in range(start, min(count, start + batch_size)):
            ms = base_ms + n * 2  # spread over about 23 days, in order
            status = statuses[n % len(statuses)]
            at = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ms / 1000)) + ".000Z"
            rows.append(
                (
                    "msg_" + ulid(ms, rng.getrandbits(80)),
                    "bat_" + ulid(ms, n),
                    TEAM,
                    f"250788{n % 1_000_000:06d}",
                    "Your code is 1234",
                    None,
                    f"ref-{n % 5000}",
                    None,
                    status,
                    1,
                    "gsm7",
                    1,
                    75,
                    str(10**8 + n),
                    day,
                    month,
                    at,
                    json.dumps([{"status": "sending", "at": at}, {"status": status, "at": at}]),
                )
            )
        conn.executemany(
            "INSERT INTO messages (id, batch_id, team_id, recipient, text, sender, reference,"
            " callback_url, status, segments, encoding, charged_segments, cost,"
            " provider_message_id, day, month, created_at, events)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            rows,
        )
        conn.commit()
        print(
            f"  preloaded {min(count, start + batch_size):>9,} / {count:,} messages",
            file=sys.stderr,
            flush=True,
        )
    for period in (day, month):
        conn.execute(
            "INSERT INTO usage (team_id, period, messages, segments, cost) VALUES (?, ?, ?, ?, ?)"
            " ON CONFLICT (team_id, period) DO UPDATE SET messages = messages + excluded.messages,"
            " segments = segments + excluded.segments, cost = cost + excluded.cost",
            (TEAM, period, count, count, 75 * count),
        )
    conn.commit()
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()
    return time.perf_counter() - started


BENCH_TEAM = [
    "-m",
    "gateway",
    "team",
    "create",
    TEAM,
    "--daily-limit",
    str(10**9),
    "--monthly-limit",
    str(10**10),
    "--monthly-budget",
    str(10**12),
]


PG_PRELOAD = """
INSERT INTO messages (id, batch_id, team_id, recipient, text, sender, reference, callback_url,
    status, segments, encoding, charged_segments, cost, provider_message_id, day, month,
    created_at, events)
SELECT 'msg_00' || lpad(n::text, 24, '0'), 'bat_00' || lpad(n::text, 24, '0'), $1,
    '250788' || lpad((n % 1000000)::text, 6, '0'), 'Your code is 1234', NULL,
    'ref-' || (n % 5000), NULL,
    (ARRAY['delivered', 'delivered', 'delivered', 'sent', 'failed', 'undelivered'])[n % 6 + 1],
    1, 'gsm7', 1, 75, (100000000 + n)::text, '2026-01-15', '2026-01', '2026-01-15T00:00:00.000Z',
    '[{"status":"sending","at":"2026-01-15T00:00:00.000Z"}]'
FROM generate_series(1, $2) AS n
"""


async def pg_preload(database: str, count: int) -> float:
    """Insert `count` messages older than any real one (ids sort first) into PostgreSQL, with
    their usage counters, then ANALYZE; seconds."""
    started = time.perf_counter()
    conn = await asyncpg.connect(database)
    try:
        for start in range(0, count, 250_000):
            chunk = min(250_000, count - start)
            await conn.execute(
                PG_PRELOAD.replace(
                    "generate_series(1, $2)", f"generate_series({start + 1}, {start} + $2)"
                ),
                TEAM,
                chunk,
            )
            print(
                f"  preloaded {start + chunk:>9,} / {count:,} messages (PostgreSQL)",
                file=sys.stderr,
                flush=True,
            )
        for period in ("2026-01-15", "2026-01"):
            await conn.execute(
                "INSERT INTO usage (team_id, period, messages, segments, cost)"
                " VALUES ($1, $2, $3, $3, $4)",
                TEAM,
                period,
                count,
                75 * count,
            )
        await conn.execute("ANALYZE")
    finally:
        await conn.close()
    return time.perf_counter() - started


@contextlib.asynccontextmanager
async def pg_database(server: str, suffix: str = "") -> AsyncIterator[str]:
    """A throwaway database on the PostgreSQL server, dropped afterwards; its URL (`suffix`
    tells apart several at once)."""
    from urllib.parse import urlsplit, urlunsplit

    name = f"sms_bench_{os.getpid()}{'_' + suffix if suffix else ''}"
    admin = await asyncpg.connect(server)
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.execute(f'CREATE DATABASE "{name}"')
        yield urlunsplit(urlsplit(server)._replace(path="/" + name))
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


async def shared_load(
    name: str, ports: tuple[int, ...], headers: dict[str, str], concurrency: int, duration: float
) -> Result:
    """The load split evenly across replicas, run at once; one combined result."""
    parts = await asyncio.gather(
        *(
            load(
                name,
                f"http://127.0.0.1:{port}/messages",
                one_recipient,
                headers,
                concurrency // len(ports),
                duration,
            )
            for port in ports
        )
    )
    return Result(
        name,
        sum(p.requests for p in parts),
        sum(p.errors for p in parts),
        max(p.seconds for p in parts),
        [latency for p in parts for latency in p.latencies],
    )


async def pages(label: str, port: int, headers: dict[str, str], seconds: float) -> Result:
    """4 clients reading `GET /messages` pages (50 delivered messages) back to back."""
    return await load(
        label,
        f"http://127.0.0.1:{port}/messages?limit=50&status=delivered",
        lambda i: {},
        headers,
        4,
        min(seconds, 5),
        method="GET",
        expect=200,
    )


def gateway_env(
    directory: Path, provider_url: str, port: int, log_level: str | None = None
) -> dict[str, str]:
    """The gateway's settings for the bench: SQLite on disk, JWT on, quotas on, logging at
    the default level (INFO: an access line a request) unless `log_level` is given."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}
    env.update(
        {
            "GATEWAY_PORT": str(port),
            "GATEWAY_DATABASE": str(directory / "bench.db"),
            "GATEWAY_JWT_SECRET": SECRET,
            "GATEWAY_PROVIDER_URL": provider_url,
            "GATEWAY_PROVIDER_API_KEY": "k",
            "GATEWAY_PROVIDER_USERNAME": "u",
            "GATEWAY_PROVIDER_PASSWORD": "p",
            "GATEWAY_SECRET_KEY": "bench-sealing-key-" + "0" * 32,
        }
    )
    if log_level:
        env["GATEWAY_LOG_LEVEL"] = log_level
    return env


async def alternate(rounds: int, runs: dict[str, Callable[[], Any]]) -> dict[str, list[Result]]:
    """Run each load in turn, `rounds` times, so machine noise hits every side alike; each
    side's results, round by round."""
    results: dict[str, list[Result]] = {name: [] for name in runs}
    for _ in range(rounds):
        for name, run in runs.items():
            results[name].append(await run())
    return results


def median_round(results: list[Result]) -> Result:
    """The round with the median throughput."""
    return sorted(results, key=lambda r: r.rate)[len(results) // 2]


def paired(
    ours: list[Result], theirs: list[Result], measure: Callable[[Result], float]
) -> list[float]:
    """measure(ours) / measure(theirs) in each round: sides run minutes apart on a machine
    whose speed drifts, so each round's pair is compared, then the median is taken."""
    return [measure(a) / measure(b) for a, b in zip(ours, theirs, strict=True)]


async def big_send(base: str, headers: dict[str, str]) -> list[float]:
    """Five sends of one text to 1,000 recipients (10 provider calls each); seconds each."""
    big = {"to": [f"0789{n:06d}" for n in range(1000)], "text": "Service notice"}
    timings = []
    async with aiohttp.ClientSession(headers=headers) as http:
        for _ in range(5):
            started = time.perf_counter()
            async with http.post(f"{base}/messages", json=big) as resp:
                await resp.read()
                assert resp.status == 201, resp.status
            timings.append(time.perf_counter() - started)
    return timings


def subprocess_run(args: list[str], env: dict[str, str]) -> int:
    """Run `python ARGS` to completion; its exit code."""
    import subprocess

    return subprocess.run(
        [sys.executable, *args], env=env, capture_output=True, check=False
    ).returncode


async def main_async(options: argparse.Namespace) -> int:
    """Run everything and print the report; 0 when every target is met (or --smoke)."""
    loop_name = type(asyncio.get_running_loop()).__module__.split(".")[0]
    pg_ports = free_port(), free_port()
    async with contextlib.AsyncExitStack() as stack:
        pg_url = None
        if options.postgres != "off":
            try:
                pg_url = await stack.enter_async_context(pg_database(options.postgres))
            except (OSError, asyncpg.PostgresError) as exc:
                print(f"PostgreSQL runs skipped: no server at {options.postgres} ({exc})")
        return await _measure(options, loop_name, pg_url, pg_ports, stack)
    return 0  # (unreachable: the stack returns above)


async def _measure(
    options: argparse.Namespace,
    loop_name: str,
    pg_url: str | None,
    pg_ports: tuple[int, int],
    stack: contextlib.AsyncExitStack,
) -> int:
    provider_port, forwarder_port = free_port(), free_port()
    empty_port, full_port = free_port(), free_port()
    provider_url = f"http://127.0.0.1:{provider_port}/api/v2/sms/send"
    headers = {"Authorization": f"Bearer {token()}"}
    n, seconds = options.concurrency, options.duration
    empty_label = "gateway (empty database)"
    full_label = f"gateway ({options.preload:,} stored)"

    pids: dict[int, int] = {}  # port -> the server's pid, once it runs

    def sends(label: str, port: int, auth: dict[str, str]) -> Callable[[], Any]:
        return lambda: load(
            label,
            f"http://127.0.0.1:{port}/messages",
            one_recipient,
            auth,
            n,
            seconds,
            pid=pids.get(port),
        )

    with tempfile.TemporaryDirectory(prefix="sms-bench-") as tmp:
        # Two gateways, one on an empty database and one on a preloaded copy, run side by side
        # so that every comparison is between runs of the same rounds.
        level = options.log_level
        empty_env = gateway_env(Path(tmp) / "empty", provider_url, empty_port, level)
        full_env = gateway_env(Path(tmp) / "full", provider_url, full_port, level)
        for env in (empty_env, full_env):
            Path(env["GATEWAY_DATABASE"]).parent.mkdir()
            store = SqliteStore(env["GATEWAY_DATABASE"])  # the file, migrated, as `serve` makes it
            await store.open()
            await store.close()
            assert subprocess_run(BENCH_TEAM, env) == 0, "could not create the bench team"
        pg_envs = []
        if pg_url is not None:
            for port in pg_ports:
                env = gateway_env(Path(tmp), provider_url, port, level)
                env["GATEWAY_DATABASE"] = pg_url
                pg_envs.append(env)
            assert subprocess_run(BENCH_TEAM, pg_envs[0]) == 0, "could not create the team (pg)"
        print(f"preloading {options.preload:,} messages ...", file=sys.stderr, flush=True)
        preload_seconds = preload(full_env["GATEWAY_DATABASE"], options.preload)
        async with (
            process(
                ["-m", "bench.servers", "provider", str(provider_port)],
                provider_port,
                ready_path="/",
            ),
            process(
                ["-m", "bench.servers", "forwarder", str(forwarder_port), provider_url],
                forwarder_port,
                ready_path="/",
            ) as forwarder_process,
            process(["-m", "gateway", "serve"], empty_port, empty_env) as empty_gateway,
            process(["-m", "gateway", "serve"], full_port, full_env) as full_gateway,
        ):
            pids.update(
                {
                    forwarder_port: forwarder_process.pid,
                    empty_port: empty_gateway.pid,
                    full_port: full_gateway.pid,
                }
            )
            runs = {
                "forwarder": sends("bare forwarder", forwarder_port, {}),
                "empty": sends(empty_label, empty_port, headers),
                "full": sends(full_label, full_port, headers),
            }
            pg_procs = [
                await stack.enter_async_context(process(["-m", "gateway", "serve"], port, env))
                for port, env in zip(pg_ports, pg_envs, strict=False)
            ]
            if pg_procs:
                runs["pg1"] = sends("PostgreSQL, 1 replica", pg_ports[0], headers)
            results = await alternate(options.rounds, runs)
            pg_two: list[Result] = []
            pg_page: Result | None = None
            if pg_procs:
                for _ in range(3):
                    pg_two.append(
                        await shared_load("PostgreSQL, 2 replicas", pg_ports, headers, n, seconds)
                    )
                assert pg_url is not None
                pg_preload_seconds = await pg_preload(pg_url, options.preload)
                print(f"PostgreSQL preload took {pg_preload_seconds:.0f} s", file=sys.stderr)
                pg_page = await pages(
                    f"PostgreSQL GET /messages page ({options.preload:,} stored)",
                    pg_ports[0],
                    headers,
                    seconds,
                )
            page = await pages(
                "GET /messages page (limit=50, 4 clients)", full_port, headers, seconds
            )
            big = await big_send(f"http://127.0.0.1:{full_port}", headers)
            rss = max(peak_rss_mb(empty_gateway.pid), peak_rss_mb(full_gateway.pid))
            from bench.drain import drain_runs  # (it builds on this module's helpers)

            print("draining queues ...", file=sys.stderr, flush=True)
            drain = await drain_runs(
                Path(tmp),
                provider_port,
                free_port(),
                headers,
                rate=options.drain_rate,
                messages=1000 if options.smoke else options.drain_messages,
                rounds=max(1, min(options.rounds, 3)),
                concurrency=n,
                seconds=seconds,
                log_level=level,
            )
    forwarder, empty, full = (median_round(results[k]) for k in ("forwarder", "empty", "full"))
    ratios = paired(results["empty"], results["forwarder"], lambda r: r.rate)
    p99_ratios = paired(results["empty"], results["forwarder"], lambda r: r.pct(0.99))
    full_ratios = paired(results["full"], results["empty"], lambda r: r.rate)
    ratio, p99_ratio, full_ratio = (statistics.median(r) for r in (ratios, p99_ratios, full_ratios))
    cpu_ratios = paired(results["empty"], results["forwarder"], lambda r: r.cpu or float("nan"))
    cpu_ratio = statistics.median(cpu_ratios)
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} cores, Python "
        f"{platform.python_version()}, {loop_name}; {n} clients, {seconds:g} s a run, "
        f"{options.rounds} alternating rounds (median round shown; ratios are the median of "
        f"each round's); gateway log level {options.log_level or 'INFO (the default)'}"
    )
    for result in (forwarder, empty, full, page):
        print(result.line())
    pg_targets = []
    if "pg1" in results and pg_page is not None:
        pg1, two = median_round(results["pg1"]), median_round(pg_two)
        for result in (pg1, two, pg_page):
            print(result.line())
        pg_ratios = paired(results["pg1"], results["empty"], lambda r: r.rate)
        pg_p99 = paired(results["pg1"], results["empty"], lambda r: r.pct(0.99))
        shown = " ".join(f"{v:.2f}" for v in pg_ratios)
        print(f"PostgreSQL / SQLite sends/s, round by round: {shown}")
        pg_ratio, pg_p99_ratio = statistics.median(pg_ratios), statistics.median(pg_p99)
        pg_errors = sum(r.errors for r in (*results["pg1"], *pg_two, pg_page))
        pg_targets = [
            ("PostgreSQL >= 0.5 x SQLite sends/s", pg_ratio >= 0.5, f"{pg_ratio:.2f}"),
            ("PostgreSQL p99 <= 3 x SQLite's", pg_p99_ratio <= 3.0, f"{pg_p99_ratio:.2f}"),
            ("PostgreSQL 0 errors", pg_errors == 0, str(pg_errors)),
            (
                "PostgreSQL GET /messages p99 <= 20 ms",
                pg_page.pct(0.99) <= 20,
                f"{pg_page.pct(0.99):.1f} ms",
            ),
        ]
    for line in drain.lines():
        print(line)
    print(f"preload of {options.preload:,} messages took {preload_seconds:.0f} s")
    print(
        f"1,000-recipient send (10 provider calls): median {statistics.median(big) * 1000:.0f}"
        f" ms, max {max(big) * 1000:.0f} ms"
    )
    print(f"gateway peak RSS: {rss:.0f} MB")
    for name, values in (
        ("gateway / forwarder sends/s", ratios),
        ("gateway / forwarder p99", p99_ratios),
        ("gateway / forwarder CPU a send", cpu_ratios),
        ("preloaded / empty sends/s", full_ratios),
    ):
        print(f"{name}, round by round: {' '.join(f'{v:.2f}' for v in values)}")
    targets = [
        ("throughput >= 0.70 x forwarder", ratio >= 0.70, f"{ratio:.2f}"),
        ("CPU a send <= 1.4 x forwarder's", cpu_ratio <= 1.4, f"{cpu_ratio:.2f}"),
        ("p99 <= 2 x forwarder", p99_ratio <= 2.0, f"{p99_ratio:.2f}"),
        ("throughput with preload within 10 %", full_ratio >= 0.90, f"{full_ratio:.2f}"),
        ("GET /messages p99 <= 20 ms", page.pct(0.99) <= 20, f"{page.pct(0.99):.1f} ms"),
        ("1,000 recipients <= 0.5 s", max(big) <= 0.5, f"{max(big) * 1000:.0f} ms"),
        ("peak RSS <= 150 MB", rss <= 150, f"{rss:.0f} MB"),
        *pg_targets,
        *drain.targets(),
    ]
    print("targets:")
    for name, met, figure in targets:
        print(f"  {'MET   ' if met else 'MISSED'} {name:<36} {figure}")
    errors = sum(r.errors for r in (forwarder, empty, full, page, *drain.alone, *drain.with_queue))
    if errors:
        print(f"{errors} requests failed", file=sys.stderr)
        return 1
    return 0 if options.smoke or all(met for _, met, _ in targets) else 3


def sizes_main(
    prog: str,
    description: str | None,
    run: Callable[[list[int], str], Coroutine[Any, Any, int]],
    default_sizes: str = "10000,50000",
) -> None:
    """The command line of the runs measured at a few sizes, on SQLite then PostgreSQL
    (bench.fanout, bench.campaign): `run(sizes, server)` gives the exit code."""
    parser = argparse.ArgumentParser(prog=prog, description=description)
    parser.add_argument("--sizes", default=default_sizes, help="sizes, comma-separated")
    parser.add_argument(
        "--postgres",
        default="postgresql://postgres@127.0.0.1:5432/postgres",
        help="PostgreSQL server for the same run on a throwaway database; 'off' skips it",
    )
    options = parser.parse_args()
    sizes = [int(n) for n in options.sizes.split(",")]
    sys.exit(asyncio.run(run(sizes, options.postgres)))


def main() -> None:
    """Entry point."""
    parser = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__)
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per load run")
    parser.add_argument("--concurrency", type=int, default=64, help="concurrent clients")
    parser.add_argument(
        "--preload",
        type=int,
        default=1_000_000,
        help="messages stored in the second gateway's database",
    )
    parser.add_argument(
        "--rounds",
        type=int,
        default=5,
        help="alternating rounds of forwarder and both gateways (the median counts)",
    )
    parser.add_argument(
        "--log-level",
        choices=("DEBUG", "INFO", "WARNING", "ERROR"),
        help="the gateways' GATEWAY_LOG_LEVEL (default: unset, so the gateway's default, INFO)",
    )
    parser.add_argument(
        "--postgres",
        default=os.environ.get(
            "GATEWAY_BENCH_POSTGRES", "postgresql://postgres@127.0.0.1:5432/postgres"
        ),
        help="PostgreSQL server for the replica runs (a throwaway database); 'off' skips them",
    )
    parser.add_argument(
        "--drain-rate",
        type=float,
        default=10.0,
        help="GATEWAY_PROVIDER_MAX_RATE of the queue drain run (provider calls a second)",
    )
    parser.add_argument(
        "--drain-messages",
        type=int,
        default=10_000,
        help="messages queued in each round of the drain run (100 a provider call)",
    )
    parser.add_argument(
        "--smoke",
        action="store_true",
        help="a quick run that checks the harness works, not the targets",
    )
    options = parser.parse_args()
    install_fast_loop()  # the load generator runs on the same loop as the servers
    raise SystemExit(asyncio.run(main_async(options)))


if __name__ == "__main__":
    main()
