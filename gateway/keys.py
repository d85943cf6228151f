"""Every web.AppKey of the application."""

from __future__ import annotations

from zoneinfo import ZoneInfo

import aiohttp
from aiohttp import web

from .auth import Authenticator
from .clock import Clock
from .leases import ClockOffset
from .metrics import Metrics
from .proxies import Proxies
from .ratelimit import RateLimiter
from .sending import SendContext
from .settings import Settings
from .store import Store
from .store.teams import TeamCache
from .webhooks import WebhookWorker

SETTINGS = web.AppKey("settings", Settings)
CLOCK: web.AppKey[Clock] = web.AppKey("clock")
TIMEZONE = web.AppKey("timezone", ZoneInfo)
STORE = web.AppKey("store", Store)
HTTP = web.AppKey("http", aiohttp.ClientSession)
AUTH = web.AppKey("auth", Authenticator)
SEND = web.AppKey("send", SendContext)
OPENAPI = web.AppKey("openapi", bytes)
WORKER = web.AppKey("worker", WebhookWorker)
METRICS = web.AppKey("metrics", Metrics)
RATES = web.AppKey("rates", RateLimiter)
TEAMS = web.AppKey("teams", TeamCache)
PROXIES = web.AppKey("proxies", Proxies)
OFFSET = web.AppKey("clock_offset", ClockOffset)
