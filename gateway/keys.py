"""Every web.AppKey of the application."""

from __future__ import annotations

from zoneinfo import ZoneInfo

import aiohttp
from aiohttp import web

from .delivery.webhooks import WebhookWorker
from .platform.clock import Clock
from .platform.leases import ClockOffset
from .platform.metrics import Metrics
from .platform.settings import Settings
from .provider.proxies import Proxies
from .sending.workflow import SendContext
from .store import Store
from .store.teams import TeamCache
from .teams.auth import Authenticator
from .teams.ratelimit import RateLimiter

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
