"""The provider call's transport: aiohttp's client, told how far each failed request got.

Every send makes one POST to one fixed URL. aiohttp does the HTTP (keep-alive pool, TLS,
framing, the proxy from `proxies.py`, resolved once at start); this module adds what billing
needs to know when a call fails, which aiohttp's exceptions do not say on their own:

- `ConnectFailed`: no connection was made (DNS, refused, TLS handshake, the proxy refused the
  tunnel, or the time ran out while connecting), so nothing was sent;
- `ResponseLost`: the request was sent, or may have been, and no whole answer came back;
- `TimeoutError`: the time ran out after the connection was made.

The boundary is the moment aiohttp hands the request a connection: a connector that marks it.
No redirect is followed (a send is never re-posted) and a POST is never retried by aiohttp.
"""

from __future__ import annotations

import ssl
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

import aiohttp
from yarl import URL

from .proxies import Proxy

MAX_BODY = 1 << 20  # an answer this large is not a provider's
IDLE_LIMIT = 4.0  # seconds a kept-alive connection may idle; servers often close at 5 s


class UpstreamError(Exception):
    """The call did not produce an HTTP answer."""


class ConnectFailed(UpstreamError):
    """No connection (DNS, refused, TLS handshake, proxy): the request was never sent."""


class ResponseLost(UpstreamError):
    """The request was sent (or may have been) and no whole HTTP answer came back."""


@dataclass(frozen=True)
class Response:
    """An upstream answer."""

    status: int
    body: bytes


class _Progress:
    """How far one call got; set by the connector when it hands over a connection."""

    __slots__ = ("connected",)

    def __init__(self) -> None:
        self.connected = False


_progress: ContextVar[_Progress | None] = ContextVar("upstream_progress", default=None)


class _MarkingConnector(aiohttp.TCPConnector):
    """aiohttp's connector, recording in the calling task that a connection was obtained."""

    async def connect(self, *args: Any, **kwargs: Any) -> aiohttp.connector.Connection:
        """Get a connection (new or kept-alive), then mark the call as connected."""
        connection = await super().connect(*args, **kwargs)
        progress = _progress.get()
        if progress is not None:
            progress.connected = True
        return connection


class Upstream:
    """POSTs to one URL over a pool of at most `limit` keep-alive connections."""

    def __init__(
        self,
        url: str,
        *,
        limit: int = 100,
        user_agent: str = "sms-gateway",
        proxy: Proxy | None = None,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self._url = URL(url)
        self.host = self._url.host or ""
        if self._url.scheme not in ("http", "https") or not self._url.host:
            raise ValueError("an absolute http or https URL is needed")
        self._via, proxy_headers = proxy.options(self._url) if proxy else ({}, {})
        self._headers = dict(proxy_headers)
        # Made once per content type and per time limit (there is one of each in practice).
        self._headers_for: dict[str, dict[str, str]] = {}
        self._timeouts: dict[float, aiohttp.ClientTimeout] = {}
        self._session = aiohttp.ClientSession(
            connector=_MarkingConnector(
                limit=limit,
                keepalive_timeout=IDLE_LIMIT,
                ssl=ssl_context if ssl_context is not None else True,
            ),
            headers={"User-Agent": user_agent, "Accept": "application/json"},
            skip_auto_headers=("Accept-Encoding",),
            auto_decompress=False,
            raise_for_status=False,
            trust_env=False,  # the proxy comes from `proxies.py`, read once
        )

    async def post(self, body: bytes, content_type: str, within: float) -> Response:
        """POST `body` and return the answer; see the module's docstring for the errors."""
        headers = self._headers_for.get(content_type)
        if headers is None:
            headers = self._headers_for[content_type] = {
                **self._headers,
                "Content-Type": content_type,
            }
        timeout = self._timeouts.get(within)
        if timeout is None:
            timeout = self._timeouts[within] = aiohttp.ClientTimeout(total=within)
        progress = _Progress()
        token = _progress.set(progress)
        try:
            async with self._session.post(
                self._url,
                data=body,
                headers=headers,
                allow_redirects=False,
                timeout=timeout,
                **self._via,
            ) as answer:
                return Response(answer.status, await _read(answer))
        except TimeoutError:
            if not progress.connected:
                raise ConnectFailed(f"no connection to the provider within {within:g} s") from None
            raise
        except aiohttp.ClientError as exc:
            if not progress.connected:  # refused, DNS, TLS, the proxy: nothing was sent
                raise ConnectFailed(
                    f"cannot connect to the provider: {type(exc).__name__}"
                ) from exc
            raise ResponseLost(f"no whole answer from the provider: {type(exc).__name__}") from exc
        except OSError as exc:
            if not progress.connected:
                raise ConnectFailed(
                    f"cannot connect to the provider: {type(exc).__name__}"
                ) from exc
            raise ResponseLost(f"the connection to the provider failed: {exc}") from exc
        finally:
            _progress.reset(token)

    async def close(self) -> None:
        """Close every connection."""
        await self._session.close()


async def _read(answer: aiohttp.ClientResponse) -> bytes:
    """The whole body, refused past MAX_BODY."""
    if answer.content_length is not None and answer.content_length > MAX_BODY:
        raise ResponseLost(f"the provider's answer is over {MAX_BODY} bytes")
    chunks: list[bytes] = []
    size = 0
    while chunk := await answer.content.readany():
        size += len(chunk)
        if size > MAX_BODY:
            raise ResponseLost(f"the provider's answer is over {MAX_BODY} bytes")
        chunks.append(chunk)
    return b"".join(chunks)
