"""Structured logs: one JSON object a line, a request id on every line, secrets redacted."""

from __future__ import annotations

import itertools
import json
import logging
import re
import sys
import uuid
from collections.abc import Iterable
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Any

from aiohttp import web
from aiohttp.abc import AbstractAccessLogger
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.web_request import BaseRequest
from aiohttp.web_response import StreamResponse

REQUEST_ID_HEADER = "X-Request-ID"
request_id: ContextVar[str | None] = ContextVar("request_id", default=None)
_VALID_REQUEST_ID = re.compile(r"[A-Za-z0-9._:@/+=-]{1,128}")

# Shapes of secrets that may show up whatever their value: JWTs, webhook secrets, credentials
# in query strings or form bodies, bearer headers.
_PATTERNS = (
    re.compile(r"eyJ[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]*"),
    re.compile(r"whsec_[A-Za-z0-9+/=]{8,}"),
    re.compile(r"(?i)((?:password|api_key|apikey|secret|token)=)[^&\s\"']+"),
    re.compile(r"(?i)(bearer\s+)[A-Za-z0-9._~+/=-]+"),
)
REDACTED = "[REDACTED]"


def _install_record_factory() -> None:
    """Stamp every log record with the request id of the request it was written under."""
    previous = logging.getLogRecordFactory()
    if getattr(previous, "stamps_request_id", False):
        return

    def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = previous(*args, **kwargs)
        record.request_id = request_id.get()
        return record

    factory.stamps_request_id = True  # type: ignore[attr-defined]
    logging.setLogRecordFactory(factory)


_install_record_factory()


class Redactor(logging.Filter):
    """Rewrites each record's message with every known secret and secret shape removed."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        super().__init__()
        self._secrets = sorted({s for s in secrets if s and len(s) >= 4}, key=len, reverse=True)

    def redact(self, text: str) -> str:
        """`text` without secrets."""
        for secret in self._secrets:
            text = text.replace(secret, REDACTED)
        for pattern in _PATTERNS:
            text = pattern.sub(lambda m: (m.group(1) if m.groups() else "") + REDACTED, text)
        return text

    def filter(self, record: logging.LogRecord) -> bool:
        """Replace the message (arguments merged) and any exception text."""
        record.msg = self.redact(record.getMessage())
        record.args = ()
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = self.redact(record.exc_text)
        return True


class UnreadableRequests(logging.Filter):
    """aiohttp logs every request its parser refuses (a 9 KB header, a NUL in a header) at
    ERROR with a traceback; anyone could fill the error log so. One WARNING line instead."""

    def filter(self, record: logging.LogRecord) -> bool:
        """Turn a parser refusal into a one-line warning; leave everything else alone."""
        error = record.exc_info[1] if record.exc_info else None
        if isinstance(error, HttpProcessingError) and 400 <= (error.code or 500) < 500:
            record.levelno, record.levelname = logging.WARNING, "WARNING"
            record.msg = "refused a request the HTTP parser could not read (%s): %s"
            record.args = (error.code, error.message)
            record.exc_info = record.exc_text = None
        return True


def quiet_parser_errors() -> None:
    """Install UnreadableRequests on aiohttp's server logger (once)."""
    server = logging.getLogger("aiohttp.server")
    if not any(isinstance(f, UnreadableRequests) for f in server.filters):
        server.addFilter(UnreadableRequests())


class JsonFormatter(logging.Formatter):
    """One JSON object per line."""

    def format(self, record: logging.LogRecord) -> str:
        """The record as JSON, with the request id when there is one."""
        entry: dict[str, object] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        rid = getattr(record, "rid", None) or getattr(record, "request_id", None)
        if rid:
            entry["request_id"] = rid
        for key in ("method", "path", "status", "duration_ms", "bytes"):
            if hasattr(record, key):
                entry[key] = getattr(record, key)
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            entry.update(fields)
        if record.exc_text:
            entry["exception"] = record.exc_text
        elif record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


class AccessLogger(AbstractAccessLogger):
    """One line per request: method, path without query string, status, size, duration."""

    @property
    def enabled(self) -> bool:
        """Whether lines are written at all (not below INFO), so aiohttp can skip the work."""
        return self.logger.isEnabledFor(logging.INFO)

    def log(self, request: BaseRequest, response: StreamResponse, time: float) -> None:
        """Write the access line (the query string can carry the provider's password)."""
        self.logger.info(
            "%s %s %s %s %.1fms",
            request.method,
            request.path,
            response.status,
            response.body_length,
            time * 1000,
            extra={
                "method": request.method,
                "path": request.path,
                "status": response.status,
                "duration_ms": round(time * 1000, 2),
                "bytes": response.body_length,
                "rid": response.headers.get(REQUEST_ID_HEADER),
            },
        )


_process_prefix = uuid.uuid4().hex[:16]
_sequence = itertools.count(1)


def _new_request_id() -> str:
    """A unique id without a system call: a random per-process prefix and a counter."""
    return f"{_process_prefix}{next(_sequence):016x}"


def request_id_for(request: web.Request) -> str:
    """The caller's X-Request-ID if it is a sensible one, else a new id."""
    given = request.headers.get(REQUEST_ID_HEADER, "")
    return given if given and _VALID_REQUEST_ID.fullmatch(given) else _new_request_id()


def configure(level: str = "INFO", secrets: Iterable[str] = (), stream: object = None) -> None:
    """JSON lines on stderr through the redaction filter."""
    handler = logging.StreamHandler(stream or sys.stderr)  # type: ignore[arg-type]
    handler.setFormatter(JsonFormatter())
    handler.addFilter(Redactor(secrets))
    root = logging.getLogger()
    for existing in list(root.handlers):
        root.removeHandler(existing)
    root.addHandler(handler)
    root.setLevel(getattr(logging, level.upper(), logging.INFO))
    # aiosqlite logs every statement with its parameters at DEBUG (webhook secrets among them).
    logging.getLogger("aiosqlite").setLevel(logging.WARNING)
