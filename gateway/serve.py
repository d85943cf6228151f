"""`sms-gateway serve`: logging, the app, and the HTTP server, with a JSON start and stop line."""

from __future__ import annotations

import gc
import logging
from importlib import metadata

from aiohttp import web

from .app import create_app
from .platform import logs
from .platform.loop import install_fast_loop
from .platform.settings import ConfigError, Settings
from .provider.proxies import Proxies
from .provider.sandbox import welcome
from .store import describe, is_postgres
from .store.errors import StoreError

log = logging.getLogger("gateway")


class ServeError(Exception):
    """The server could not start; the message is one line for the operator."""


def serve(settings: Settings) -> None:
    """Run the gateway until SIGINT/SIGTERM; ServeError if it cannot start."""
    install_fast_loop()
    try:
        proxies = Proxies.from_environment()
    except ValueError as exc:
        raise ServeError(f"HTTPS_PROXY / HTTP_PROXY: {exc}") from None
    logs.configure(settings.log_level, secrets=(*settings.secrets, *proxies.passwords()))
    try:
        app = create_app(settings, proxies=proxies)
    except ConfigError as exc:
        raise ServeError(str(exc)) from None
    if settings.sandbox:
        app.on_startup.append(welcome)
    app.on_startup.append(_settle_memory)
    started = {
        "event": "start",
        "version": version(),
        "listen": f"{settings.host}:{settings.port}",
        "public_url": settings.public_url,
        "database": "postgresql" if is_postgres(settings.database) else "sqlite",
        "sandbox": settings.sandbox,
    }
    try:
        web.run_app(
            app,
            host=settings.host,
            port=settings.port,
            access_log_class=logs.AccessLogger,
            # aiohttp's "Running on" banner, said when the port listens: a JSON line instead.
            print=lambda _banner: log.info("gateway started", extra={"fields": started}),
        )
    except StoreError as exc:
        raise ServeError(f"database {describe(settings.database)}: {exc}") from None
    except OSError as exc:
        raise ServeError(
            f"cannot listen on {settings.host}:{settings.port}: {exc.strerror}"
        ) from None
    log.info("gateway stopped", extra={"fields": {"event": "stop"}})


def version() -> str:
    """The installed package's version."""
    try:
        return metadata.version("sms-gateway")
    except metadata.PackageNotFoundError:  # running from a source tree
        return "unknown"


async def _settle_memory(app: web.Application) -> None:
    """After start-up: keep what exists out of the collector's way, and collect less often.

    A send makes many short-lived objects; the default thresholds spent a few per cent of the
    CPU in collections that found nothing to free (seen with py-spy under load).
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(20_000, 20, 50)
