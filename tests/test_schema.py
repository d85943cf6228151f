"""openapi.yaml is a valid OpenAPI document, and the running gateway keeps to it (schemathesis)."""

from __future__ import annotations

import asyncio
import os
import shutil
import sys
from pathlib import Path

import yaml
from openapi_spec_validator import validate

from .conftest import free_port, gateway_process, mint, serve_env

ROOT = Path(__file__).resolve().parent.parent
CHECKS = ",".join(
    [
        "not_a_server_error",
        "status_code_conformance",
        "content_type_conformance",
        "response_schema_conformance",
        "response_headers_conformance",
    ]
)


def test_openapi_document_is_valid() -> None:
    validate(yaml.safe_load((ROOT / "openapi.yaml").read_text()))


async def test_schemathesis_finds_no_server_error_or_schema_violation(tmp_path: Path) -> None:
    port = free_port()
    env = serve_env(str(tmp_path / "gateway.db"), port, sandbox="1", sandbox_dlr_delay="0.05")
    # One token that is a registered team (the sandbox's) and an admin, to reach every operation.
    token = mint("sandbox", "messages:send messages:read admin", exp=2**31 - 1)
    st = shutil.which("schemathesis", path=str(Path(sys.executable).parent)) or "schemathesis"
    async with gateway_process(env, port):
        proc = await asyncio.create_subprocess_exec(
            st,
            "run",
            str(ROOT / "openapi.yaml"),
            "--url",
            f"http://127.0.0.1:{port}",
            "--header",
            f"Authorization: Bearer {token}",
            "--checks",
            CHECKS,
            "--max-examples",
            "50",
            "--seed",
            "20261124",
            "--request-timeout",
            "20",
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            env={**os.environ, "NO_COLOR": "1", "SCHEMATHESIS_TELEMETRY": "false"},
        )
        output, _ = await proc.communicate()
    report = output.decode(errors="replace")
    assert proc.returncode == 0, report[-6000:]
    document = yaml.safe_load((ROOT / "openapi.yaml").read_text())
    operations = sum(
        method in ("get", "post", "patch", "put", "delete")
        for item in document["paths"].values()
        for method in item
    )
    assert f"Tested: {operations}" in report, report[-3000:]  # every operation was exercised
    assert " passed" in report and "failures" not in report.split("SUMMARY")[-1]
