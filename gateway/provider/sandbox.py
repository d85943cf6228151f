"""The simulated provider behind --sandbox: the provider's HTTP contract on a loopback port.

Rules: 75 RWF a segment; a recipient ending in 13 is refused (`failed`, not charged); one ending
in 99 is sent but later reported undelivered; everyone else is delivered. Delivery reports are
sent to the `dlrurl` as the real provider does, a moment after the send.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import itertools
import logging
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import aiohttp
from aiohttp import web

from ..keys import SETTINGS, STORE
from ..platform.clock import utcnow
from ..sending import segments
from ..store import Store, make_store
from ..store import teams as store_teams
from ..store.errors import Duplicate
from ..teams.tokens import DEFAULT_SCOPE, issue_token

log = logging.getLogger("gateway.sandbox")

PRICE_PER_SEGMENT = 75
# Takes a delivery report in-process instead of over HTTP: (dlrurl, recipient, id, D or U).
Deliver = Callable[[str, str, str, str], Awaitable[None]]


@dataclass
class Simulator:
    """A running simulated provider; `url` is its send endpoint."""

    username: str
    password: str
    api_key: str
    dlr_delay: float
    deliver: Deliver | None = None  # None: GET the dlrurl, as the provider does
    url: str = ""
    _runner: web.AppRunner | None = None
    _session: aiohttp.ClientSession | None = None
    _tasks: set[asyncio.Task[None]] = field(default_factory=set)
    _ids: itertools.count[int] = field(default_factory=lambda: itertools.count(118579716))

    async def start(self) -> None:
        """Listen on a free loopback port."""
        app = web.Application()
        app.router.add_post("/api/v2/sms/send", self._send)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = self._runner.addresses[0][1]
        self.url = f"http://127.0.0.1:{port}/api/v2/sms/send"
        self._session = aiohttp.ClientSession()

    async def stop(self) -> None:
        """Cancel pending reports and stop listening."""
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._session is not None:
            await self._session.close()
        if self._runner is not None:
            await self._runner.cleanup()

    def _authorised(self, form: dict[str, str]) -> bool:
        return all(
            hmac.compare_digest(form.get(name, "").encode(), expected.encode())
            for name, expected in (
                ("api_key", self.api_key),
                ("username", self.username),
                ("password", self.password),
            )
        )

    async def _send(self, request: web.Request) -> web.Response:
        if request.content_type == "application/json":
            try:
                raw = await request.json()
            except ValueError:
                raw = {}
            form = {str(k): str(v) for k, v in raw.items()} if isinstance(raw, dict) else {}
        else:
            form = {k: str(v) for k, v in (await request.post()).items()}
        if not self._authorised(form):
            return web.json_response(
                {"status": "error", "message": "Invalid credentials"}, status=401
            )
        recipients = [r.strip() for r in form.get("recipients", "").split(",") if r.strip()]
        message = form.get("message", "")
        if not recipients or not message:
            return web.json_response(
                {"status": "error", "message": "recipients and message are required"}, status=400
            )
        cost_each = max(segments.count(message).segments, 1) * PRICE_PER_SEGMENT
        answers = []
        for recipient in recipients:
            message_id = str(next(self._ids))
            if recipient.endswith("13"):
                answers.append(
                    {
                        "status": "failed",
                        "messageid": message_id,
                        "recipient": recipient,
                        "cost": 0,
                        "message": "Recipient refused by the network",
                    }
                )
                continue
            answers.append(
                {
                    "status": "sent",
                    "messageid": message_id,
                    "recipient": recipient,
                    "cost": cost_each,
                }
            )
            if form.get("dlrurl"):
                state = "U" if recipient.endswith("99") else "D"
                self._later(form["dlrurl"], recipient, message_id, state)
        return web.json_response(
            {
                "status": "success",
                "totalmessages": len(answers),
                "totalcost": sum(cost_each for a in answers if a["status"] == "sent"),
                "unit": "RWF",
                "response": answers,
            }
        )

    def _later(self, dlrurl: str, recipient: str, message_id: str, state: str) -> None:
        task = asyncio.get_running_loop().create_task(
            self._report(dlrurl, recipient, message_id, state)
        )
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _report(self, dlrurl: str, recipient: str, message_id: str, state: str) -> None:
        await asyncio.sleep(self.dlr_delay)
        if self.deliver is not None:
            try:
                await self.deliver(dlrurl, recipient, message_id, state)
            except Exception:  # the database may be away: like a lost report
                log.exception("simulated DLR for %s not taken", message_id)
            return
        params = {
            "dnis": recipient,
            "username": self.username,
            "password": self.password,
            "command": "deliver",
            "dlvrMsgId": message_id,
            "dlvrMsgStat": state,
        }
        assert self._session is not None
        try:
            async with self._session.get(
                dlrurl, params=params, timeout=aiohttp.ClientTimeout(total=10)
            ) as resp:
                if resp.status != 200:
                    log.info("sandbox DLR for %s answered HTTP %s", message_id, resp.status)
        except (aiohttp.ClientError, TimeoutError) as exc:
            log.info("sandbox DLR for %s not delivered: %s", message_id, type(exc).__name__)


SIGNING_KEY = "sandbox_jwt_secret"


def test_simulator(dlr_delay: float, deliver: Deliver) -> Simulator:
    """The simulator behind test tokens (scope `messages:test`), in every gateway process: the
    sandbox's rules, credentials of its own (never the provider's), its delivery reports
    taken in-process."""
    return Simulator(
        "test-" + secrets.token_hex(4),
        secrets.token_urlsafe(24),
        secrets.token_urlsafe(24),
        dlr_delay,
        deliver,
    )


def signing_key(database: str) -> str:
    """The sandbox's HS256 key, made once and kept in its database (so tokens survive a
    restart and `sms-gateway token issue` works against the sandbox); creates the database."""
    if database == ":memory:":
        return secrets.token_hex(32)

    async def read() -> str:
        store = make_store(database)
        await store.open()
        try:
            return (await store.secret(SIGNING_KEY)).hex()
        finally:
            await store.close()

    return asyncio.run(read())


async def stored_signing_key(store: Store) -> str | None:
    """The sandbox's key, if this database belongs to a sandbox."""
    row = await store.fetchone("SELECT value FROM meta WHERE key = ?", (SIGNING_KEY,))
    return str(row["value"]) if row else None


SANDBOX_TEAM = "sandbox"


async def welcome(app: web.Application) -> None:
    """At start-up in sandbox mode: make sure the sandbox team exists and print its tokens and a
    first command (stdout, for the person who just typed `serve --sandbox`)."""
    settings, store = app[SETTINGS], app[STORE]
    if await store_teams.find_team(store, SANDBOX_TEAM) is None:
        with contextlib.suppress(Duplicate):  # another sandbox replica made it just now
            await store_teams.create_team(store, SANDBOX_TEAM, {"name": "Sandbox team"}, utcnow())
    token = issue_token(settings, SANDBOX_TEAM, DEFAULT_SCOPE, 7 * 86400)
    admin_token = issue_token(settings, "sandbox-admin", "admin", 7 * 86400)
    print(
        "\nSandbox mode: no SMS leaves this machine; sends go to a built-in simulator.\n"
        f"  team:        {SANDBOX_TEAM}\n"
        f"  token:       {token}\n"
        f"  admin token: {admin_token}\n"
        f"  dashboard:   {settings.public_url}/dashboard/ (sign in with the admin token)\n"
        "Try:\n"
        f"  export TOKEN={token}\n"
        f'  curl -s {settings.public_url}/messages -H "Authorization: Bearer $TOKEN" '
        "-H 'Content-Type: application/json' "
        '-d \'{"to": ["0788123456"], "text": "Hello from the sandbox"}\'\n',
        flush=True,
    )
