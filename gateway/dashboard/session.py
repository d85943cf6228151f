"""Sign-in for the dashboard: aiohttp-session with the sessions kept on the server (in the
database), so that signing out ends a session for every process; and CSRF tokens."""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

from aiohttp import web
from aiohttp_session import AbstractStorage, Session, get_session

from ..platform.clock import iso
from ..platform.logs import request_id
from ..sending.validation import refuse_unstorable, unstorable_fields
from ..store import Store
from ..store import dashboard as store_dashboard
from ..store.audit import Actor

COOKIE = "sms_gateway_dashboard"
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _hash(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


class DatabaseStorage(AbstractStorage):
    """Sessions in the `dashboard_sessions` table; the cookie holds only a random key.

    A session ends when it is invalidated (sign-out), when its admin token expires (`exp` in
    the session sets its lifetime), or when the row is gone.
    """

    def __init__(self, store: Store, *, secure: bool) -> None:
        super().__init__(cookie_name=COOKIE, httponly=True, samesite="Strict", secure=secure)
        self._store = store

    async def load_session(self, request: web.Request) -> Session:
        """The session the cookie names, if it is still live on the server."""
        key = self.load_cookie(request)
        if key:
            data = await store_dashboard.session_data(self._store, _hash(key), _now())
            if data is not None:
                stored = json.loads(data)
                if stored["session"].get("exp", 0) > time.time():
                    # (max_age None: the session checks its age against it, we check `exp`)
                    return Session(key, data=stored, new=False, max_age=None)
        return Session(None, data=None, new=True, max_age=None)

    async def save_session(
        self, request: web.Request, response: web.StreamResponse, session: Session
    ) -> None:
        """Write the session (a new key when it is new) or end it."""
        key = session.identity
        if session.empty:
            if isinstance(key, str):
                await store_dashboard.end_session(self._store, _hash(key), _now())
            self.save_cookie(response, "", max_age=session.max_age)
            return
        if not isinstance(key, str):
            key = secrets.token_urlsafe(32)
            session.set_new_identity(key)
        expires = float(session.get("exp", time.time()))
        await store_dashboard.save_session(
            self._store,
            _hash(key),
            json.dumps(self._get_session_data(session)),
            iso(datetime.fromtimestamp(expires, UTC)),
        )
        self.save_cookie(response, key, max_age=max(1, int(expires - time.time())))


def _now() -> str:
    return iso(datetime.now(UTC))


async def signed_in(request: web.Request) -> Session | None:
    """The session of a signed-in operator, or None."""
    session = await get_session(request)
    if session.new or "sub" not in session:
        return None
    return session


def require_session(handler: Handler) -> Handler:
    """A page for signed-in operators: 303 to the sign-in form otherwise."""

    async def page(request: web.Request) -> web.StreamResponse:
        if await signed_in(request) is None:
            raise web.HTTPSeeOther(request.app.router["login"].url_for())
        return await handler(request)

    return page


async def form_with_csrf(request: web.Request) -> dict[str, str]:
    """A posted form whose `csrf` field matches the session's; 403 (and nothing done) if not."""
    session = await signed_in(request)
    if session is None:
        raise web.HTTPSeeOther(request.app.router["login"].url_for())
    try:
        posted = await request.post()
    except ValueError:
        raise web.HTTPBadRequest(text="the form cannot be read") from None
    fields = {k: v for k, v in posted.items() if isinstance(v, str)}
    refuse_unstorable(unstorable_fields(fields))
    expected = session.get("csrf", "")
    if not (expected and hmac.compare_digest(fields.get("csrf", ""), expected)):
        raise web.HTTPForbidden(text="the form's CSRF token is missing or wrong; nothing changed")
    return fields


async def operator(request: web.Request) -> Actor:
    """The signed-in operator making a change from a page, for its audit entry."""
    session = await signed_in(request)
    subject = str(session.get("sub")) if session else "unknown"
    return Actor(subject, "dashboard", request.remote, request_id.get())


def start(session: Session, subject: str, expires: float) -> None:
    """Fill a new session for an operator whose admin token expires at `expires`."""
    session["sub"] = subject
    session["exp"] = expires
    session["csrf"] = secrets.token_urlsafe(32)
    session.max_age = max(1, int(expires - time.time()))


def context(session: Session | None) -> dict[str, Any]:
    """What every signed-in page's template needs."""
    return {
        "csrf": session.get("csrf", "") if session else "",
        "operator": session.get("sub") if session else None,
    }
