"""What the HTTP parser refuses (an oversized or malformed header, a bad request line) is
answered as problem+json too, without echoing what was sent, and no answer names a version.

aiohttp answers such requests itself, before any application code runs, in
`RequestHandler.handle_error`: a `text/plain` body that repeats the parser's message, which
quotes the offending bytes (an `Authorization` header among them). It offers no hook for that
answer, so the method is wrapped, once per process: a parser refusal gets a fixed problem
body; every other call (an error inside a handler) goes to aiohttp's own.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web, web_protocol
from aiohttp.http_exceptions import HttpProcessingError, LineTooLong

from ..errors import PROBLEM_CONTENT_TYPE, problem_body
from .jsonio import dumps

SERVER = "sms-gateway"  # the Server header: no software version

_REFUSED = {
    400: ("bad_request", "The request cannot be read", "the request is not valid HTTP"),
    413: ("payload_too_large", "The request is too large", "the request is too large"),
    431: (
        "request_header_fields_too_large",
        "A header is too large",
        "a request header (or all of them) is longer than this server reads",
    ),
}


def refusal(exc: BaseException | None) -> web.Response | None:
    """The answer to a request the parser refused (None for any other error)."""
    if not isinstance(exc, HttpProcessingError) or not 400 <= (exc.code or 500) < 500:
        return None
    status = 431 if isinstance(exc, LineTooLong) else exc.code
    code, title, detail = _REFUSED.get(status, _REFUSED[400])
    if status not in _REFUSED:
        status = 400
    body = problem_body(status, code, title, detail + "; nothing was done")
    response = web.Response(
        status=status,
        body=dumps(body),
        content_type=PROBLEM_CONTENT_TYPE,
        headers={"Server": SERVER},
    )
    response.force_close()
    return response


def install() -> None:
    """Wrap aiohttp's error answer (idempotent)."""
    original = web_protocol.RequestHandler.handle_error
    if getattr(original, "_gateway", False):
        return

    def handle_error(
        self: web_protocol.RequestHandler,
        request: Any,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        answer = refusal(exc)
        if answer is None:
            response = original(self, request, status, exc, message)
            response.headers["Server"] = SERVER
            return response
        self.log_exception("Error handling request from %s", request.remote, exc_info=exc)
        return answer

    handle_error._gateway = True  # type: ignore[attr-defined]
    web_protocol.RequestHandler.handle_error = handle_error  # type: ignore[method-assign]


async def name_no_version(_request: web.Request, response: web.StreamResponse) -> None:
    """on_response_prepare: every answer of the app names the gateway, not its versions."""
    response.headers["Server"] = SERVER
