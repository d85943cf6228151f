"""Tracing (the `otel` extra): a real `sms-gateway serve` exports over OTLP/HTTP to a real
receiver that decodes the protobuf, and one trace joins the caller's traceparent, the request,
the database writes, the provider call, the delivery report and the webhook attempt, whose
traceparent the team's receiver saw. Off, nothing of OpenTelemetry is imported."""

from __future__ import annotations

import asyncio
import os
import secrets
import subprocess
import sys
import textwrap
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)

from gateway.platform import tracing

from .conftest import (
    API_KEY,
    JWT_SECRET,
    PASSWORD,
    SECRET_KEY,
    FakeProvider,
    Receiver,
    auth,
    free_port,
    gateway_process,
    mint,
    serve_env,
)


@dataclass
class Span:
    trace_id: str
    span_id: str
    parent: str
    name: str
    kind: int
    attributes: dict[str, Any]
    error: bool


@dataclass
class Collector:
    """An OTLP/HTTP receiver: every exported span, and every body as it came."""

    url: str = ""
    spans: list[Span] = field(default_factory=list)
    bodies: list[bytes] = field(default_factory=list)

    async def handle(self, request: web.Request) -> web.Response:
        assert request.content_type == "application/x-protobuf"
        body = await request.read()
        self.bodies.append(body)
        export = ExportTraceServiceRequest.FromString(body)
        for resource in export.resource_spans:
            for scope in resource.scope_spans:
                for s in scope.spans:
                    attributes = {a.key: _value(a.value) for a in s.attributes}
                    self.spans.append(
                        Span(
                            s.trace_id.hex(),
                            s.span_id.hex(),
                            s.parent_span_id.hex(),
                            s.name,
                            s.kind,
                            attributes,
                            s.status.code == 2,  # STATUS_CODE_ERROR
                        )
                    )
        return web.Response(
            body=ExportTraceServiceResponse().SerializeToString(),
            content_type="application/x-protobuf",
        )

    def trace(self, trace_id: str) -> list[Span]:
        return [s for s in self.spans if s.trace_id == trace_id]


def _value(value: Any) -> Any:
    kind = value.WhichOneof("value")
    return getattr(value, kind) if kind else None


@pytest.fixture
async def collector() -> AsyncIterator[Collector]:
    state = Collector()
    app = web.Application()
    app.router.add_post("/v1/traces", state.handle)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    state.url = str(server.make_url("")).rstrip("/")
    yield state
    await server.close()


async def until(check: Any, within: float = 15.0) -> None:
    async with asyncio.timeout(within):
        while not check():
            await asyncio.sleep(0.05)


@pytest.mark.both_databases
async def test_one_trace_joins_the_caller_the_send_the_provider_and_the_webhook(
    tmp_path: Path,
    database: str,
    provider: FakeProvider,
    receiver: Receiver,
    collector: Collector,
) -> None:
    provider.dlr = "after"  # the provider reports delivery once it has answered
    port = free_port()
    env = serve_env(database, port, provider.url)
    env.update(
        OTEL_EXPORTER_OTLP_ENDPOINT=collector.url,
        OTEL_BSP_SCHEDULE_DELAY="100",  # milliseconds between exports
        OTEL_SERVICE_NAME="sms-gateway-under-test",
    )
    caller_trace, caller_span = secrets.token_hex(16), secrets.token_hex(8)
    async with gateway_process(env, port), aiohttp.ClientSession() as http:
        base = f"http://127.0.0.1:{port}"
        async with http.post(
            f"{base}/admin/teams",
            json={"id": "payments", "name": "Payments", "callback_url": receiver.url},
            headers=auth(mint("root", "admin")),
        ) as resp:
            assert resp.status == 201, await resp.text()
            webhook_secret = (await resp.json())["webhook_secret"]
        token = mint("payments")
        async with http.post(
            f"{base}/messages",
            json={"to": ["0788123456"], "text": "Your code is 4821"},
            headers={**auth(token), "traceparent": f"00-{caller_trace}-{caller_span}-01"},
        ) as resp:
            assert resp.status == 201, await resp.text()
            (message,) = (await resp.json())["messages"]
        await receiver.wait_for(1, timeout=15)
        headers, _body = receiver.received[0]
        queued_trace = secrets.token_hex(16)
        async with http.post(
            f"{base}/messages",
            json={"to": ["0788123457"], "text": "Term results", "queue": True},
            headers={**auth(token), "traceparent": f"00-{queued_trace}-{caller_span}-01"},
        ) as resp:
            assert resp.status == 202, await resp.text()
        names = {"POST /messages", "db reserve", "provider send", "db settle", "webhook POST"}
        await until(lambda: names <= {s.name for s in collector.trace(caller_trace)})
        await until(lambda: any(s.name == "GET /dlr/{token}" for s in collector.spans))
        queued = {"POST /messages", "db reserve", "dispatch batch", "provider send", "webhook POST"}
        await until(lambda: queued <= {s.name for s in collector.trace(queued_trace)})

    spans = {s.name: s for s in collector.trace(caller_trace)}
    request = spans["POST /messages"]
    assert request.parent == caller_span  # it continues the caller's trace
    assert request.kind == 2  # SPAN_KIND_SERVER
    assert request.attributes["http.route"] == "/messages"
    assert request.attributes["http.response.status_code"] == 201
    for child in ("db reserve", "provider send", "db settle"):
        assert spans[child].parent == request.span_id, child
    assert spans["db reserve"].attributes["db.system.name"] == (
        "postgresql" if database.startswith("postgresql") else "sqlite"
    )
    call = spans["provider send"]
    assert call.kind == 3 and call.attributes["server.address"] == "127.0.0.1"  # CLIENT
    assert call.attributes["gateway.recipients"] == 1 and not call.error
    # The webhook attempt, made later by the worker after the provider's report, continues the
    # send's trace (stored with the message), and the receiver got the attempt's traceparent.
    attempt = spans["webhook POST"]
    assert attempt.parent == request.span_id and attempt.kind == 3
    assert attempt.attributes["http.response.status_code"] == 204
    assert headers["traceparent"] == f"00-{caller_trace}-{attempt.span_id}-01"
    assert receiver.received[0][1].count(message["id"].encode()) == 1
    # A queued send: the dispatcher's call, on its own time, joins the trace that queued it.
    later = {s.name: s for s in collector.trace(queued_trace)}
    assert later["POST /messages"].attributes["http.response.status_code"] == 202
    assert later["dispatch batch"].parent == later["POST /messages"].span_id
    assert later["provider send"].parent == later["dispatch batch"].span_id
    assert later["webhook POST"].parent == later["POST /messages"].span_id
    # The provider's report is a request of its own, named by its route's template.
    reports = [s for s in collector.spans if s.name == "GET /dlr/{token}"]
    assert reports and {r.attributes["http.response.status_code"] for r in reports} == {200}
    # Nothing secret left in what was exported: the provider's credentials, the team's token,
    # its webhook secret, the DLR URL's token, the sealing key.
    exported = b"".join(collector.bodies)
    dlr_token = provider.calls[0]["dlrurl"].rsplit("/", 1)[1]
    for secret in (PASSWORD, API_KEY, JWT_SECRET, SECRET_KEY, token, webhook_secret, dlr_token):
        assert secret.encode() not in exported, secret
    assert b"sms-gateway-under-test" in exported  # the SDK's own settings apply


def test_tracing_is_wanted_only_when_the_sdk_settings_ask_for_it() -> None:
    endpoint = {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"}
    assert tracing.wanted(endpoint)
    assert tracing.wanted({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://c:4318/v1/traces"})
    assert not tracing.wanted({})
    assert not tracing.wanted({"OTEL_EXPORTER_OTLP_ENDPOINT": " "})
    assert not tracing.wanted({**endpoint, "OTEL_SDK_DISABLED": "true"})
    assert not tracing.wanted({**endpoint, "OTEL_TRACES_EXPORTER": "none"})


def test_off_nothing_of_opentelemetry_is_imported(tmp_path: Path) -> None:
    """A send through the sandbox, in a fresh interpreter without the SDK's settings: not one
    opentelemetry module is loaded (the extra is installed in this environment)."""
    script = textwrap.dedent(
        """
        import asyncio, os, sys
        from aiohttp.test_utils import TestClient, TestServer
        from gateway.app import create_app
        from gateway.platform.settings import Settings
        from gateway.teams.tokens import issue_token

        async def main():
            settings = Settings.from_env(os.environ, sandbox=True)
            assert settings.tracing is False
            async with TestClient(TestServer(create_app(settings))) as client:
                admin = issue_token(settings, "root", "admin", 60)
                resp = await client.post(
                    "/admin/teams", json={"id": "ops", "name": "Ops"},
                    headers={"Authorization": "Bearer " + admin})
                assert resp.status == 201, (resp.status, await resp.text())
                token = issue_token(settings, "ops", "messages:send", 60)
                resp = await client.post(
                    "/messages", json={"to": ["0788123456"], "text": "hi"},
                    headers={"Authorization": "Bearer " + token})
                assert resp.status == 201, (resp.status, await resp.text())
            loaded = sorted(m for m in sys.modules if m.startswith("opentelemetry"))
            print(loaded)
            assert not loaded, loaded

        asyncio.run(main())
        """
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GATEWAY_", "OTEL_"))}
    env.update(GATEWAY_DATABASE=str(tmp_path / "off.db"), GATEWAY_JWT_SECRET=JWT_SECRET)
    done = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.strip() == "[]"
