"""Logging set-up and an access log that never writes query strings (they can carry secrets)."""

from __future__ import annotations

import logging

from aiohttp.abc import AbstractAccessLogger
from aiohttp.web_request import BaseRequest
from aiohttp.web_response import StreamResponse


class AccessLogger(AbstractAccessLogger):
    """One line per request: method, path without query, status, size, duration."""

    def log(self, request: BaseRequest, response: StreamResponse, time: float) -> None:
        """Write the access line."""
        self.logger.info(
            "%s %s %s %s %.1fms",
            request.method,
            request.path,
            response.status,
            response.body_length,
            time * 1000,
        )


def configure(level: str = "INFO") -> None:
    """Plain one-line log records on stderr."""
    logging.basicConfig(
        level=getattr(logging, level.upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
    )
    # aiosqlite logs every statement with its parameters at DEBUG (webhook secrets among them).
    logging.getLogger("aiosqlite").setLevel(logging.WARNING)
