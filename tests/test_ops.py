"""Operations routes, error shape for unknown routes, and the OpenAPI document."""

from __future__ import annotations

from pathlib import Path

import yaml
from aiohttp import web
from aiohttp.test_utils import TestClient

from .conftest import auth, mint, problem

Client = TestClient[web.Request, web.Application]
ROOT = Path(__file__).resolve().parent.parent


async def test_healthz(client: Client) -> None:
    resp = await client.get("/healthz")
    assert resp.status == 200 and await resp.json() == {"status": "ok"}


async def test_unknown_route_and_method_are_problems(client: Client) -> None:
    await problem(await client.get("/nope"), 404, "not_found")
    resp = await client.delete("/messages")
    await problem(resp, 405, "method_not_allowed")
    assert "POST" in resp.headers["Allow"]


async def test_body_over_256_kib_is_413(client: Client) -> None:
    resp = await client.post(
        "/messages",
        data=b"x" * (256 * 1024 + 1),
        headers={"Content-Type": "application/json", **auth(mint())},
    )
    await problem(resp, 413, "payload_too_large")


async def test_openapi_is_served_and_describes_every_route(client: Client) -> None:
    resp = await client.get("/openapi.yaml")
    assert resp.status == 200
    served = await resp.read()
    assert served == (ROOT / "openapi.yaml").read_bytes()
    document = yaml.safe_load(served)
    assert document["openapi"].startswith("3.1")
    documented = {
        (method.upper(), path)
        for path, item in document["paths"].items()
        for method in item
        if method in ("get", "post", "patch", "put", "delete")
    }
    routed = set()
    for route in client.app.router.routes():
        info = route.resource.get_info() if route.resource else {}
        path = info.get("path") or info.get("formatter")
        if route.method != "HEAD" and path and not path.startswith("/dashboard"):
            routed.add((route.method, path))
    assert routed == documented  # the dashboard's pages are HTML for people, not the API
