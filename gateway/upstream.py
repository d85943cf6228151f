"""A small HTTP/1.1 client for the one upstream on the send path: the provider.

Every send makes one provider call, and aiohttp's client spends about 100 µs of CPU on each
(measured under `bench/`), more than anything else in the gateway. This client does only what
that call needs, for about a third of the cost: POST a body to one fixed URL over a pool of
keep-alive connections (TLS for https), and read the status and body, parsed by llhttp through
httptools. It follows no redirects and uses no proxy; the rest of the gateway's HTTP (JWKS,
webhooks) stays on aiohttp.

How a failure is reported matters for billing, so the errors say how far the request got:
`ConnectFailed` (nothing was sent), `ResponseLost` (it was sent, or may have been, and no whole
answer came back) and `TimeoutError` (the time ran out, at any point).
"""

from __future__ import annotations

import asyncio
import ssl
import time
from collections import deque
from dataclasses import dataclass
from typing import cast
from urllib.parse import urlsplit

import httptools

MAX_BODY = 1 << 20  # an answer this large is not a provider's
IDLE_LIMIT = 4.0  # seconds a kept-alive connection may idle; servers often close at 5 s


class UpstreamError(Exception):
    """The call did not produce an HTTP answer."""


class ConnectFailed(UpstreamError):
    """No connection (DNS, refused, TLS handshake): the request was never sent."""


class ResponseLost(UpstreamError):
    """The request was sent (or may have been) and no whole HTTP answer came back."""


@dataclass(frozen=True)
class Response:
    """An upstream answer."""

    status: int
    body: bytes


class _Connection(asyncio.Protocol):
    """One keep-alive connection; answers one request at a time."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.idle_since = 0.0
        self._parser = httptools.HttpResponseParser(self)
        self._waiter: asyncio.Future[Response] | None = None
        self._body: list[bytes] = []
        self._size = 0
        self._headers_done = False
        self._framed = False  # Content-Length or chunked: the body's end is known
        self._keep_alive = False  # read when an answer completes (the parser resets after)

    # asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass

    def data_received(self, data: bytes) -> None:
        if self._waiter is None:  # bytes nobody asked for: the connection cannot be trusted
            self.close()
            return
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._fail(ResponseLost("the provider switched protocols"))
        except httptools.HttpParserError as exc:
            self._fail(ResponseLost(f"the provider's answer is not HTTP ({exc})"))

    def eof_received(self) -> bool:
        return False  # close our side too

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        waiter = self._waiter
        if waiter is None or waiter.done():
            return
        if self._headers_done and not self._framed:
            # An answer without Content-Length or chunking ends when the connection does.
            self._complete()
        else:
            self._fail(ResponseLost("the connection closed before the answer was complete"))

    # httptools callbacks

    def on_header(self, name: bytes, value: bytes) -> None:
        if name.lower() in (b"content-length", b"transfer-encoding"):
            self._framed = True

    def on_headers_complete(self) -> None:
        self._headers_done = True
        if self._parser.get_status_code() in (204, 304):
            self._framed = True

    def on_body(self, body: bytes) -> None:
        self._size += len(body)
        if self._size > MAX_BODY:
            self._fail(ResponseLost(f"the provider's answer is over {MAX_BODY} bytes"))
            return
        self._body.append(body)

    def on_message_complete(self) -> None:
        if 100 <= self._parser.get_status_code() < 200:  # an interim answer: the real one follows
            self._body, self._size, self._headers_done, self._framed = [], 0, False, False
            return
        self._complete()

    # the client's side

    def request(self, data: bytes) -> asyncio.Future[Response]:
        """Write one request; the future gets its answer."""
        assert self.transport is not None and self._waiter is None
        self._waiter = asyncio.get_running_loop().create_future()
        self._body, self._size, self._headers_done, self._framed = [], 0, False, False
        self._keep_alive = False
        self.transport.write(data)
        return self._waiter

    def reusable(self) -> bool:
        """Whether the last exchange left the connection fit for another request."""
        return (
            not self.closed
            and self._waiter is None
            and self.transport is not None
            and not self.transport.is_closing()
            and self._keep_alive
        )

    def close(self) -> None:
        """Drop the connection at once."""
        self.closed = True
        if self.transport is not None:
            self.transport.abort()

    def _complete(self) -> None:
        self._keep_alive = self._parser.should_keep_alive()
        waiter, self._waiter = self._waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result(Response(self._parser.get_status_code(), b"".join(self._body)))
        self._body = []

    def _fail(self, exc: Exception) -> None:
        waiter, self._waiter = self._waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_exception(exc)
        self.close()


class Upstream:
    """POSTs to one URL over a pool of at most `limit` keep-alive connections."""

    def __init__(
        self,
        url: str,
        *,
        limit: int = 100,
        user_agent: str = "sms-gateway",
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("an absolute http or https URL is needed")
        self._tls = parts.scheme == "https"
        self._host = parts.hostname
        self._port = parts.port or (443 if self._tls else 80)
        self._ssl = (ssl_context or ssl.create_default_context()) if self._tls else None
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        default_port = self._port == (443 if self._tls else 80)
        host = parts.hostname if ":" not in parts.hostname else f"[{parts.hostname}]"
        authority = host if default_port else f"{host}:{self._port}"
        self._head = (
            f"POST {target} HTTP/1.1\r\nHost: {authority}\r\nUser-Agent: {user_agent}\r\n"
            "Accept: application/json\r\n"
        ).encode("ascii")
        self._slots = asyncio.Semaphore(limit)
        self._idle: deque[_Connection] = deque()
        self._open: set[_Connection] = set()

    async def post(self, body: bytes, content_type: str, within: float) -> Response:
        """POST `body` and return the answer; see the module's docstring for the errors."""
        async with self._slots:
            conn: _Connection | None = None
            try:
                async with asyncio.timeout(within):
                    conn = self._reuse() or await self._connect()
                    answer = await conn.request(
                        self._head
                        + b"Content-Type: "
                        + content_type.encode("ascii")
                        + b"\r\nContent-Length: "
                        + str(len(body)).encode("ascii")
                        + b"\r\n\r\n"
                        + body
                    )
            except TimeoutError:
                if conn is None:  # still connecting: nothing was sent
                    raise ConnectFailed(
                        f"no connection to the provider within {within:g} s"
                    ) from None
                self._drop(conn)
                raise
            except BaseException:
                if conn is not None:  # in an unknown state: never reuse it
                    self._drop(conn)
                raise
            if conn.reusable():
                conn.idle_since = time.monotonic()
                self._idle.append(conn)
            else:
                self._drop(conn)
            return answer

    def _drop(self, conn: _Connection) -> None:
        conn.close()
        self._open.discard(conn)

    def _reuse(self) -> _Connection | None:
        """The most recently used idle connection that is still fit, closing stale ones."""
        now = time.monotonic()
        while self._idle:
            conn = self._idle.pop()
            if conn.reusable() and now - conn.idle_since < IDLE_LIMIT:
                return conn
            self._drop(conn)
        return None

    async def _connect(self) -> _Connection:
        loop = asyncio.get_running_loop()
        try:
            _, conn = await loop.create_connection(
                _Connection,
                self._host,
                self._port,
                ssl=self._ssl,
                server_hostname=self._host if self._tls else None,
            )
        except OSError as exc:  # refused, unreachable, DNS, TLS handshake (ssl.SSLError)
            raise ConnectFailed(f"cannot connect to the provider: {type(exc).__name__}") from exc
        self._open.add(conn)
        return conn

    async def close(self) -> None:
        """Close every connection."""
        for conn in list(self._open):
            conn.close()
        self._open.clear()
        self._idle.clear()
        await asyncio.sleep(0)  # let the transports finish closing
