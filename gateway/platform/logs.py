"""Structured logs: one JSON object a line, a request id on every line, secrets redacted."""

from __future__ import annotations

import atexit
import itertools
import json
import logging
import queue
import re
import sys
import threading
import uuid
from collections.abc import Iterable
from contextvars import ContextVar
from datetime import UTC, datetime
from logging.handlers import QueueHandler
from typing import Any

import orjson
from aiohttp import web
from aiohttp.abc import AbstractAccessLogger
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.web_request import BaseRequest
from aiohttp.web_response import StreamResponse

REQUEST_ID_HEADER = "X-Request-ID"
request_id: ContextVar[str | None] = ContextVar("request_id", default=None)
# What the request's handling adds to its access line (a send's batch, team, outcome): one line
# a request instead of two. Set to a fresh dict by the edge middleware for every request.
request_fields: ContextVar[dict[str, object] | None] = ContextVar("request_fields", default=None)
REQUEST_FIELDS = "log_fields"  # the same dict, kept on the request for the access logger
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
# Every pattern above needs one of these; one search rules the four out for most lines.
_SUSPECT = re.compile(r"eyJ|whsec_|=|(?i:bearer)")


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
            if secret in text:
                text = text.replace(secret, REDACTED)
        if _SUSPECT.search(text) is None:  # most lines (an access line) hold no secret shape
            return text
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
            # (the parser's message quotes the bytes it refused: a header may hold a token)
            record.msg = "refused a request the HTTP parser could not read (%s, %s)"
            record.args = (error.code, type(error).__name__)
            record.exc_info = record.exc_text = None
        return True


def quiet_parser_errors() -> None:
    """Install UnreadableRequests on aiohttp's server logger (once)."""
    server = logging.getLogger("aiohttp.server")
    if not any(isinstance(f, UnreadableRequests) for f in server.filters):
        server.addFilter(UnreadableRequests())


class JsonFormatter(logging.Formatter):
    """One JSON object per line."""

    _second = -1
    _stamp = ""

    def _time(self, created: float) -> str:
        """The record's time as ISO 8601 in UTC with milliseconds; the second's text is kept,
        so most records only add their milliseconds."""
        second = int(created)
        if second != self._second:
            self._stamp = datetime.fromtimestamp(second, UTC).strftime("%Y-%m-%dT%H:%M:%S")
            self._second = second
        return f"{self._stamp}.{int((created - second) * 1000):03d}+00:00"

    def format(self, record: logging.LogRecord) -> str:
        """The record as JSON, with the request id when there is one."""
        entry: dict[str, object] = {
            "time": self._time(record.created),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        rid = getattr(record, "rid", None) or getattr(record, "request_id", None)
        if rid:
            entry["request_id"] = rid
        access = getattr(record, "access", None)
        if access is not None:
            entry.update(access)
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            entry.update(fields)
        if record.exc_text:
            entry["exception"] = record.exc_text
        elif record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        try:
            return orjson.dumps(entry).decode()
        except TypeError:  # a value orjson cannot write (a field of an unusual type)
            return json.dumps(entry, ensure_ascii=False, default=str)


def note(message: str, /, **fields: object) -> None:
    """Add `fields` to the current request's access line; outside a request (or with the
    access line off), log `message` with them at INFO."""
    current = request_fields.get()
    if current is not None and _access.isEnabledFor(logging.INFO):
        current.update(fields)
    elif _notes.isEnabledFor(logging.INFO):
        _notes.info(message, extra={"fields": fields})


_access = logging.getLogger("aiohttp.access")
_notes = logging.getLogger("gateway")


class AccessLogger(AbstractAccessLogger):
    """One line per request: method, path without query string, status, size, duration, and
    what the handling noted (`note`)."""

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
                "access": {
                    "method": request.method,
                    "path": request.path,
                    "status": response.status,
                    "duration_ms": round(time * 1000, 2),
                    "bytes": response.body_length,
                },
                "fields": request.get(REQUEST_FIELDS),
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


class _Enqueue(QueueHandler):
    """Hands records to the writer thread as they are: the message is merged and formatted
    there (log arguments are plain values, so rendering them a moment later is the same)."""

    def prepare(self, record: logging.LogRecord) -> logging.LogRecord:
        """The record itself; no formatting on the caller's thread."""
        return record


class _Writer:
    """The writer thread: every WRITE_INTERVAL it takes all waiting records, formats them
    (redaction, JSON) and writes them in one write. Waking per record instead (the standard
    QueueListener) cost more CPU than formatting on the event loop: a thread wake-up and a
    GIL hand-over per line."""

    def __init__(
        self, records: queue.SimpleQueue[logging.LogRecord], handler: logging.Handler, stream: Any
    ) -> None:
        self._records = records
        self._handler = handler
        self._stream = stream
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name="log-writer", daemon=True)
        self._lock = threading.Lock()

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        while not self._stopping.wait(WRITE_INTERVAL):
            self.drain()
        self.drain()

    def drain(self) -> None:
        """Write every waiting record now."""
        with self._lock:
            lines = []
            handler = self._handler
            while True:
                try:
                    record = self._records.get_nowait()
                except queue.Empty:
                    break
                if record.levelno < handler.level or not handler.filter(record):
                    continue
                try:
                    lines.append(handler.format(record))
                except Exception:
                    handler.handleError(record)
            if lines:
                try:
                    self._stream.write("\n".join(lines) + "\n")
                    self._stream.flush()
                except (OSError, ValueError):
                    pass  # nowhere to write: dropping the lines is all that is left

    def stop(self) -> None:
        self._stopping.set()
        if self._thread.is_alive():
            self._thread.join()
        self.drain()


WRITE_INTERVAL = 0.05
_writer: _Writer | None = None


def configure(level: str = "INFO", secrets: Iterable[str] = (), stream: object = None) -> None:
    """JSON lines on stderr through the redaction filter, written by a background thread.

    A record costs the caller only its creation and a queue put; redaction, JSON and the write
    happen on the writer thread, which flushes once per burst. `flush()` (and the exit) waits
    for every line to be written.
    """
    global _writer
    _stop()
    out = stream or sys.stderr
    writer = logging.Handler()
    writer.setFormatter(JsonFormatter())
    writer.addFilter(Redactor(secrets))
    records: queue.SimpleQueue[logging.LogRecord] = queue.SimpleQueue()
    root = logging.getLogger()
    for existing in list(root.handlers):
        root.removeHandler(existing)
    root.addHandler(_Enqueue(records))
    root.setLevel(getattr(logging, level.upper(), logging.INFO))
    _writer = _Writer(records, writer, out)
    _writer.start()
    # No line carries the caller's file, thread or process: skip collecting them (the logging
    # HOWTO's "Optimization"; finding the caller walks the stack on every record).
    logging._srcfile = None
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    # aiosqlite logs every statement with its parameters at DEBUG (webhook secrets among them).
    logging.getLogger("aiosqlite").setLevel(logging.WARNING)


def flush() -> None:
    """Write every line logged so far now."""
    if _writer is not None:
        _writer.drain()


def _stop() -> None:
    global _writer
    if _writer is not None:
        _writer.stop()
        _writer = None


atexit.register(_stop)  # runs before logging's own shutdown, which was registered earlier
