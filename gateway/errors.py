"""Domain errors, and the middleware that turns them (and every other failure) into problem+json."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from aiohttp import web

from .platform.jsonio import dumps
from .store import errors as store_errors

log = logging.getLogger("gateway")

PROBLEM_TYPE_BASE = "https://sms-gateway.internal/problems/"
PROBLEM_CONTENT_TYPE = "application/problem+json"


class GatewayError(Exception):
    """An error with an HTTP status and a stable machine-readable code, raised by domain code."""

    status = 400
    code = "bad_request"
    title = "Bad request"

    def __init__(
        self,
        detail: str,
        *,
        extra: Mapping[str, Any] | None = None,
        headers: Mapping[str, str] | None = None,
        code: str | None = None,
    ) -> None:
        super().__init__(detail)
        self.detail = detail
        self.extra = dict(extra or {})
        self.headers = dict(headers or {})
        if code is not None:
            self.code = code


class InvalidJSON(GatewayError):
    status, code, title = 400, "invalid_json", "The body is not valid JSON"


class InvalidBody(GatewayError):
    status, code, title = 400, "invalid_body", "The body cannot be read"


class UnsupportedMediaType(GatewayError):
    status, code, title = 415, "unsupported_media_type", "Send the body as JSON"


class PayloadTooLarge(GatewayError):
    status, code, title = 413, "payload_too_large", "The body is too large"


class ValidationFailed(GatewayError):
    status, code, title = 422, "validation_error", "The request is not valid"


class InvalidRecipient(GatewayError):
    status, code, title = 422, "invalid_recipient", "One or more recipients are not valid"


class Unauthenticated(GatewayError):
    status, code, title = 401, "unauthenticated", "Authentication required"

    def __init__(self, detail: str, *, error: str | None = "invalid_token") -> None:
        challenge = 'Bearer realm="sms-gateway"'
        if error:
            challenge += f', error="{error}"'
        super().__init__(detail, headers={"WWW-Authenticate": challenge})


class Forbidden(GatewayError):
    status, code, title = 403, "forbidden", "Not allowed"


class NotFound(GatewayError):
    status, code, title = 404, "not_found", "Not found"


class Conflict(GatewayError):
    status, code, title = 409, "conflict", "Conflict"


class QuotaExceeded(GatewayError):
    status, code, title = 429, "quota_exceeded", "Quota exceeded"


class RateLimited(GatewayError):
    status, code, title = 429, "rate_limited", "Too many requests"


class NotReady(GatewayError):
    status, code, title = 503, "not_ready", "Not ready"


class DatabaseUnavailable(GatewayError):
    status, code, title = 503, "database_busy", "The database is busy"


class DatabaseUnreachable(GatewayError):
    status, code, title = 503, "database_unavailable", "The database cannot be reached"


def domain_error(error: BaseException) -> GatewayError | None:
    """The domain error an exception stands for (a store error becomes its HTTP meaning)."""
    if isinstance(error, GatewayError):
        return error
    if isinstance(error, store_errors.DatabaseUnreachable):
        return DatabaseUnreachable(
            f"{error}; nothing was sent, retry shortly", headers={"Retry-After": "1"}
        )
    if isinstance(error, store_errors.DatabaseUnavailable):
        # Raised only where nothing was sent: after the provider may have acted, the send
        # workflow answers 504 instead (see sending/workflow.py).
        return DatabaseUnavailable(
            f"{error}; nothing was sent, retry shortly", headers={"Retry-After": "1"}
        )
    if isinstance(error, store_errors.NotFound):
        return NotFound(str(error), code=f"{error.kind}_not_found")
    if isinstance(error, store_errors.Duplicate):
        return Conflict(str(error), code=f"{error.kind}_exists")
    return None


class ProviderError(GatewayError):
    status, code, title = 502, "provider_error", "The provider refused the send"


class ProviderUnavailable(GatewayError):
    status, code, title = 503, "provider_unavailable", "The provider cannot be reached"


class ProviderTimeout(GatewayError):
    status, code, title = 504, "provider_timeout", "The provider's answer was lost"


# aiohttp's own HTTP exceptions (unknown route, wrong method, body too large) keep their status.
_HTTP_CODES = {
    400: "bad_request",
    404: "not_found",
    405: "method_not_allowed",
    413: "payload_too_large",
    415: "unsupported_media_type",
}


def problem_body(
    status: int,
    code: str,
    title: str,
    detail: str,
    *,
    instance: str | None = None,
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The members of an RFC 9457 problem."""
    body: dict[str, Any] = {
        "type": PROBLEM_TYPE_BASE + code,
        "title": title,
        "status": status,
        "detail": detail,
        "code": code,
    }
    if instance:
        body["instance"] = instance
    if extra:
        body.update(extra)
    return body


def error_body(exc: GatewayError, instance: str | None = None) -> dict[str, Any]:
    """The problem members of a domain error."""
    return problem_body(
        exc.status, exc.code, exc.title, exc.detail, instance=instance, extra=exc.extra
    )


def problem_response(
    status: int,
    code: str,
    title: str,
    detail: str,
    *,
    instance: str | None = None,
    extra: Mapping[str, Any] | None = None,
    headers: Mapping[str, str] | None = None,
) -> web.Response:
    """Build an RFC 9457 problem+json answer."""
    return web.Response(
        status=status,
        body=dumps(problem_body(status, code, title, detail, instance=instance, extra=extra)),
        content_type=PROBLEM_CONTENT_TYPE,
        headers=dict(headers or {}),
    )


def problem_for(request: web.Request, error: Exception) -> web.Response:
    """The problem+json answer for a failure: domain errors and aiohttp's HTTP errors keep their
    status; anything else is a crash, logged, and a 500. Re-raises aiohttp's 2xx/3xx exceptions."""
    domain = domain_error(error)
    if domain is not None:
        error = domain
    if isinstance(error, GatewayError):
        return problem_response(
            error.status,
            error.code,
            error.title,
            error.detail,
            instance=request.path,
            extra=error.extra,
            headers=error.headers,
        )
    if isinstance(error, web.HTTPException):
        if error.status < 400:
            raise error
        headers = {k: v for k, v in error.headers.items() if k.lower() in ("allow", "retry-after")}
        return problem_response(
            error.status,
            _HTTP_CODES.get(error.status, "http_error"),
            error.reason,
            error.text or error.reason,
            instance=request.path,
            headers=headers,
        )
    log.error("unhandled error on %s %s", request.method, request.path, exc_info=error)
    return problem_response(
        500,
        "internal_error",
        "Internal error",
        "The gateway failed; the error was logged.",
        instance=request.path,
    )
