"""The outgoing proxy, read from HTTPS_PROXY / HTTP_PROXY / NO_PROXY once at start.

aiohttp's `trust_env=True` reads the environment (and ~/.netrc) again on every request, which
costs more CPU than the rest of a provider call; the environment does not change while the
process runs, so it is read here once and each request is given its proxy explicitly.
"""

from __future__ import annotations

import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from yarl import URL


@dataclass(frozen=True)
class Proxy:
    """One proxy: its URL without credentials, and the credentials as a header apart."""

    url: URL
    headers: Mapping[str, str] | None = None  # Proxy-Authorization, when it has credentials
    password: str | None = None

    @classmethod
    def parse(cls, value: str) -> Proxy:
        """`http://user:password@host:port` → a Proxy; a value without a scheme gets http."""
        url = URL(value if "://" in value else f"http://{value}")
        if url.scheme not in ("http", "https") or not url.host:
            raise ValueError(f"unusable proxy URL {url.with_user(None)}")
        if url.user is None:
            return cls(url)
        header = aiohttp.encode_basic_auth(url.user, url.password or "")
        return cls(url.with_user(None), {"Proxy-Authorization": header}, url.password)

    def options(self, url: URL) -> tuple[dict[str, Any], Mapping[str, str]]:
        """See Proxies.request_options."""
        if self.headers and url.scheme == "http":
            return {"proxy": self.url}, self.headers
        return {"proxy": self.url, "proxy_headers": self.headers}, {}


@dataclass(frozen=True)
class Proxies:
    """The proxy for each scheme and the hosts that bypass it (NO_PROXY)."""

    by_scheme: Mapping[str, Proxy] = field(default_factory=dict)
    _bypass: dict[str, str] = field(default_factory=dict)  # {"no": NO_PROXY}, urllib's shape

    @classmethod
    def from_environment(cls) -> Proxies:
        """Read the proxy variables the way every HTTP tool does (urllib's rules: lower or
        upper case, `NO_PROXY` a comma-separated list of hosts, domains, `*`)."""
        found = urllib.request.getproxies_environment()
        by_scheme = {
            scheme: Proxy.parse(value)
            for scheme, value in found.items()
            if scheme in ("http", "https") and value
        }
        return cls(by_scheme, {"no": found["no"]} if found.get("no") else {})

    def for_url(self, url: URL) -> Proxy | None:
        """The proxy a request to `url` goes through, or None (no proxy, or NO_PROXY)."""
        proxy = self.by_scheme.get(url.scheme)
        if proxy is None or url.host is None:
            return None
        host = url.host if url.explicit_port is None else f"{url.host}:{url.port}"
        if urllib.request.proxy_bypass_environment(host, self._bypass):  # type: ignore[attr-defined]
            return None
        return proxy

    def request_options(self, url: URL) -> tuple[dict[str, Any], Mapping[str, str]]:
        """The aiohttp request options that send a request to `url` through its proxy, and the
        headers to add to the request itself (no proxy: nothing).

        A plain-http request goes to the proxy itself and carries the credentials in its own
        headers; an https one tunnels through CONNECT, which carries them (`proxy_headers`).
        """
        proxy = self.for_url(url)
        if proxy is None:
            return {}, {}
        return proxy.options(url)

    def hosts(self) -> frozenset[str]:
        """The proxies' own host names (the webhook resolver lets these through)."""
        return frozenset(p.url.host for p in self.by_scheme.values() if p.url.host)

    def passwords(self) -> list[str]:
        """Proxy passwords, for the log redaction."""
        return [p.password for p in self.by_scheme.values() if p.password]
