"""The operator's dashboard under /dashboard: server-rendered pages, no JavaScript needed."""

from __future__ import annotations

import warnings
from pathlib import Path

import aiohttp_jinja2
import jinja2
from aiohttp import web
from aiohttp.typedefs import Middleware
from aiohttp.web_exceptions import NotAppKeyWarning
from aiohttp_session import session_middleware

from ..keys import SETTINGS, STORE, TIMEZONE
from . import audit as audit_views
from . import endpoints as endpoint_views
from . import messages as message_views
from . import suppressions as suppression_views
from . import teams as team_views
from . import views
from .session import DatabaseStorage, Handler

HERE = Path(__file__).parent

# aiohttp-session 2.12 keeps its state under string keys of the request, which aiohttp 3.14
# warns about; that warning would otherwise go to stderr, outside the JSON log.
warnings.filterwarnings(
    "ignore", message="It is recommended to use web.RequestKey", category=NotAppKeyWarning
)


def dashboard_app(parent: web.Application) -> web.Application:
    """The /dashboard sub-application (its sessions need the parent's store, opened later)."""
    settings = parent[SETTINGS]
    made: list[Middleware] = []  # aiohttp-session's middleware, once the store is open

    @web.middleware
    async def sessions(request: web.Request, handler: Handler) -> web.StreamResponse:
        if not made:
            storage = DatabaseStorage(
                request.config_dict[STORE], secure=settings.public_url.startswith("https:")
            )
            made.append(session_middleware(storage))
        return await made[0](request, handler)

    app = web.Application(middlewares=[sessions])
    env = aiohttp_jinja2.setup(
        app,
        loader=jinja2.PackageLoader("gateway.dashboard", "templates"),
        autoescape=jinja2.select_autoescape(["html"]),
    )
    tz = parent[TIMEZONE]
    env.filters["localtime"] = lambda value: views.localtime(value, tz)
    env.globals["timezone"] = tz.key
    env.globals["sandbox"] = settings.sandbox
    r = app.router
    r.add_get("/", views.overview, name="overview")
    r.add_get("/login", views.login_form, name="login")
    r.add_post("/login", views.login)
    r.add_post("/logout", views.logout, name="logout")
    r.add_get("/teams", team_views.teams, name="teams")
    r.add_post("/teams", team_views.create_team)
    r.add_get("/teams/{id}", team_views.team, name="team")
    r.add_post("/teams/{id}", team_views.update_team)
    r.add_post("/teams/{id}/webhook-secret", team_views.rotate_secret, name="rotate")
    r.add_post("/teams/{id}/endpoints", endpoint_views.create, name="endpoints")
    r.add_post("/endpoints/{id}/enable", endpoint_views.enable, name="endpoint_enable")
    r.add_post("/endpoints/{id}/recover", endpoint_views.recover, name="endpoint_recover")
    r.add_post("/endpoints/{id}/rotate", endpoint_views.rotate, name="endpoint_rotate")
    r.add_post("/endpoints/{id}/delete", endpoint_views.delete, name="endpoint_delete")
    r.add_get("/messages", message_views.messages, name="messages")
    r.add_get("/messages/{id}", message_views.message, name="message")
    r.add_get("/webhooks", message_views.webhooks, name="webhooks")
    r.add_post("/webhooks/{id}/retry", message_views.retry_webhook, name="retry")
    r.add_get("/billing", views.billing, name="billing")
    r.add_get("/audit", audit_views.audit, name="audit")
    r.add_get("/suppressions", suppression_views.suppressions, name="suppressions")
    r.add_post("/suppressions", suppression_views.add)
    r.add_post("/suppressions/remove", suppression_views.remove, name="suppressions_remove")
    r.add_post("/suppressions/import", suppression_views.import_numbers, name="suppressions_import")
    r.add_get("/billing.csv", views.billing_csv, name="billing_csv")
    r.add_static("/static", HERE / "static", name="static")
    return app


def setup_dashboard(app: web.Application) -> None:
    """Mount the dashboard at /dashboard (and send /dashboard to /dashboard/)."""

    async def to_slash(request: web.Request) -> web.Response:
        raise web.HTTPMovedPermanently("/dashboard/")

    app.router.add_get("/dashboard", to_slash, allow_head=False)
    app.add_subapp("/dashboard", dashboard_app(app))
