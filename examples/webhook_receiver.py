"""A team's webhook receiver for the SMS gateway: checks each delivery's signature, handles each
event once, and prints it.

    pip install aiohttp standardwebhooks
    WEBHOOK_SECRET=whsec_... python3 webhook_receiver.py     # http://127.0.0.1:9000/sms-events

HOST and PORT change where it listens. Answer 2xx only once the event is safely handled: any
other answer (or none within 15 s) makes the gateway retry, with the same `webhook-id`.
"""

from __future__ import annotations

import os

from aiohttp import web
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

VERIFIER = web.AppKey("verifier", Webhook)
SEEN = web.AppKey("seen", set[str])


async def sms_events(request: web.Request) -> web.Response:
    """One webhook delivery."""
    body = await request.read()
    try:
        # Checks the HMAC with the team's secret, and refuses timestamps over 5 minutes old.
        event = request.app[VERIFIER].verify(body, dict(request.headers))
    except WebhookVerificationError:
        return web.Response(status=401, text="bad signature")
    webhook_id = request.headers["webhook-id"]
    if webhook_id in request.app[SEEN]:  # a retry of an event already handled
        return web.Response(status=204)
    message = event["data"]
    # Your work goes here: mark the order's SMS delivered, alert on `undelivered`, ...
    print(webhook_id, event["type"], message["id"], message["to"], message["status"], flush=True)
    request.app[SEEN].add(webhook_id)  # keep this in your database in real use
    return web.Response(status=204)


def make_app(secret: str) -> web.Application:
    """The receiver's aiohttp application."""
    app = web.Application()
    app[VERIFIER] = Webhook(secret)
    app[SEEN] = set()
    app.router.add_post("/sms-events", sms_events)
    return app


def main() -> None:
    """Listen until Ctrl-C."""
    secret = os.environ.get("WEBHOOK_SECRET", "")
    if not secret.startswith("whsec_"):
        raise SystemExit("set WEBHOOK_SECRET to the team's whsec_ secret")
    host, port = os.environ.get("HOST", "127.0.0.1"), int(os.environ.get("PORT", "9000"))
    print(f"listening on http://{host}:{port}/sms-events", flush=True)
    web.run_app(make_app(secret), host=host, port=port, print=None)


if __name__ == "__main__":
    main()
