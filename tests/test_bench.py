"""A few-seconds run of the benchmark harness, so it cannot rot (the figures are not checked)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_harness_smoke_run() -> None:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench.run",
            "--smoke",
            "--duration",
            "1",
            "--rounds",
            "1",
            "--concurrency",
            "8",
            "--preload",
            "2000",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    if os.environ.get("CI") == "true":  # CI has PostgreSQL: the replica runs must be there
        for line in ("PostgreSQL, 1 replica", "PostgreSQL, 2 replicas", "PostgreSQL GET /messages"):
            assert line in out, out
    for line in (
        "bare forwarder",
        "gateway (empty database)",
        "gateway (2,000 stored)",
        "GET /messages page",
        "1,000-recipient send",
        "gateway peak RSS",
        "direct sends while 1,000 queued drain",
        "queue drain: 1,000 messages in 10 calls",
        "targets:",
    ):
        assert line in out, out
    assert "errors 0" in out and " 0/s" not in out


def test_fanout_and_campaign_smoke_runs() -> None:
    """bench.fanout and bench.campaign at small sizes (their figures are not checked: exit 3,
    a missed target, is fine here), on PostgreSQL too where CI has it."""
    server = (
        "off" if os.environ.get("CI") != "true" else "postgresql://postgres@127.0.0.1:5432/postgres"
    )
    for module, expected in (
        ("bench.fanout", ["SQLite, 300 waiting: 300 delivered", "0 twice"]),
        ("bench.campaign", ["SQLite, 300 recipients: reports", "0 twice"]),
    ):
        result = subprocess.run(
            [sys.executable, "-m", module, "--sizes", "300", "--postgres", server],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=180,
            check=False,
        )
        assert result.returncode in (0, 3), result.stdout + result.stderr
        for line in expected:
            assert line in result.stdout, result.stdout
        if server != "off":
            assert "PostgreSQL, 300" in result.stdout, result.stdout


def test_suppression_bench_smoke_run() -> None:
    """bench.suppressions at small sizes (figures not checked), on PostgreSQL too on CI."""
    server = (
        "off" if os.environ.get("CI") != "true" else "postgresql://postgres@127.0.0.1:5432/postgres"
    )
    result = subprocess.run(
        [sys.executable, "-m", "bench.suppressions", "--sizes", "10,2000", "--postgres", server],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert result.returncode in (0, 3), result.stdout + result.stderr
    assert "SQLite, 100-recipient send:" in result.stdout, result.stdout
    if server != "off":
        assert "PostgreSQL, 1-recipient send:" in result.stdout, result.stdout
