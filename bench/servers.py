"""The two stand-ins the harness runs: a fast fake provider and a bare forwarder.

`python -m bench.servers provider PORT` answers every send at once in the provider's format.
`python -m bench.servers forwarder PORT PROVIDER_URL` is the ceiling the gateway is compared with:
JSON in, a form post to the provider, JSON out; no auth, no storage.
`python -m bench.servers receiver PORT` is a team's fast webhook receiver: 204 at once, each
arrival's webhook-id and time kept for `GET /stats`; its `GET /dlr/{token}` is a bare handler
that only answers 200.
"""

from __future__ import annotations

import collections
import itertools
import sys
import time

import aiohttp
from aiohttp import web

from gateway.platform.loop import install_fast_loop

QUEUED_TEXT = "Queued notice"  # the text the drain bench queues: its calls are recorded
CAMPAIGN_TEXT = "Campaign notice"  # the campaign bench's sends: each recipient's DLR URL is kept


def provider_app() -> web.Application:
    """A provider that charges 75 RWF and never sends delivery reports. Calls carrying
    QUEUED_TEXT are recorded (arrival time, recipients) for `GET /stats`."""
    ids = itertools.count(1)
    times: list[float] = []
    seen: collections.Counter[str] = collections.Counter()
    reports: list[tuple[str, str, str]] = []  # (dlrurl, recipient, messageid) of campaign sends

    async def campaign(request: web.Request) -> web.Response:
        return web.json_response(reports)

    async def stats(request: web.Request) -> web.Response:
        return web.json_response(
            {
                "times": times,
                "recipients": sum(seen.values()),
                "duplicates": sum(n - 1 for n in seen.values() if n > 1),
            }
        )

    async def send(request: web.Request) -> web.Response:
        arrived = time.monotonic()
        form = await request.post()
        recipients = str(form.get("recipients", "")).split(",")
        if form.get("message") == QUEUED_TEXT:
            times.append(arrived)
            seen.update(recipients)
        response = [
            {"status": "sent", "messageid": str(next(ids)), "recipient": r, "cost": 75}
            for r in recipients
        ]
        if form.get("message") == CAMPAIGN_TEXT:
            dlrurl = str(form.get("dlrurl", ""))
            reports.extend((dlrurl, str(r["recipient"]), str(r["messageid"])) for r in response)
        return web.json_response(
            {
                "status": "success",
                "totalmessages": len(response),
                "totalcost": 75 * len(response),
                "unit": "RWF",
                "response": response,
            }
        )

    app = web.Application()
    app.router.add_post("/api/v2/sms/send", send)
    app.router.add_get("/stats", stats)
    app.router.add_get("/campaign", campaign)
    return app


def forwarder_app(provider_url: str) -> web.Application:
    """JSON in, form to the provider, JSON out."""

    async def start(app: web.Application) -> None:
        app["session"] = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=100))

    async def stop(app: web.Application) -> None:
        await app["session"].close()

    async def messages(request: web.Request) -> web.Response:
        body = await request.json()
        to = body["to"] if isinstance(body["to"], list) else [body["to"]]
        form = {
            "api_key": "k",
            "username": "u",
            "password": "p",
            "recipients": ",".join(to),
            "message": body["text"],
        }
        async with request.app["session"].post(provider_url, data=form) as resp:
            answer = await resp.json()
        return web.json_response(answer, status=201)

    app = web.Application()
    app.on_startup.append(start)
    app.on_cleanup.append(stop)
    app.router.add_post("/messages", messages)
    return app


def receiver_app() -> web.Application:
    """A team's webhook endpoint that answers 204 at once and counts what arrived."""
    arrivals: list[float] = []
    ids: collections.Counter[str] = collections.Counter()

    async def hook(request: web.Request) -> web.Response:
        await request.read()
        arrivals.append(time.monotonic())
        ids[request.headers.get("webhook-id", "")] += 1
        return web.Response(status=204)

    async def stats(request: web.Request) -> web.Response:
        return web.json_response(
            {
                "count": len(arrivals),
                "first": arrivals[0] if arrivals else None,
                "last": arrivals[-1] if arrivals else None,
                "twice": sum(1 for n in ids.values() if n > 1),
            }
        )

    async def bare_report(request: web.Request) -> web.Response:
        return web.Response(text="OK")  # the ceiling a delivery report's intake is compared with

    app = web.Application()
    app.router.add_post("/hooks", hook)
    app.router.add_get("/stats", stats)
    app.router.add_get("/dlr/{token}", bare_report)
    return app


def main() -> None:
    """Run one of the stand-ins on a loopback port."""
    install_fast_loop()
    kind, port = sys.argv[1], int(sys.argv[2])
    if kind == "receiver":
        app = receiver_app()
    else:
        app = provider_app() if kind == "provider" else forwarder_app(sys.argv[3])
    web.run_app(app, host="127.0.0.1", port=port, access_log=None, print=lambda _: None)


if __name__ == "__main__":
    main()
