"""Where the gateway may call back: callback URLs may not reach the gateway's own network edge
(loopback, link-local such as the cloud metadata address, unspecified addresses)."""

from __future__ import annotations

import functools
import ipaddress
import socket
from dataclasses import dataclass
from urllib.parse import urlsplit

from aiohttp.abc import ResolveResult
from aiohttp.resolver import ThreadedResolver

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class CallbackRefused(OSError):
    """A callback URL's host is, or resolves to, an address the gateway does not call."""


@dataclass(frozen=True)
class CallbackPolicy:
    """Which addresses callbacks may reach: never link-local or unspecified; loopback only in
    the sandbox or inside an allowed network."""

    allowed: tuple[Network, ...] = ()
    allow_loopback: bool = False

    def refusal(self, address: Address) -> str | None:
        """Why the gateway will not call this address, or None."""
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        if address.is_link_local:
            return f"a link-local address ({address})"
        if address.is_unspecified:
            return f"an unspecified address ({address})"
        if address.is_loopback and not (
            self.allow_loopback or any(address in net for net in self.allowed)
        ):
            return f"a loopback address ({address})"
        return None

    def url_refusal(self, url: str) -> str | None:
        """Why a callback URL is refused when it is given, or None. Host names are checked
        against what they resolve to when a delivery is made (DNS can change)."""
        try:
            parts = urlsplit(url)
            host = parts.hostname
            _ = parts.port  # a port that is not a number is refused here, not at delivery
        except ValueError:
            return "is not a valid URL"
        if parts.scheme not in ("http", "https") or not host:
            return "must be an absolute http or https URL"
        address = literal_address(host)
        if address is None:
            name = host.rstrip(".").lower()
            if name == "localhost" or name.endswith(".localhost"):
                address = ipaddress.IPv4Address("127.0.0.1")
            else:
                return None
        reason = self.refusal(address)
        return None if reason is None else f"points at {reason}"


def literal_address(host: str) -> Address | None:
    """The address a host written as one stands for, including the old IPv4 forms that
    resolvers still accept (`2130706433`, `0x7f.1`, `127.1`)."""
    try:
        return ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        pass
    if host and all(c in "0123456789abcdefxABCDEFX." for c in host):
        try:
            return ipaddress.IPv4Address(socket.inet_aton(host))
        except OSError:
            return None
    return None


@functools.lru_cache(maxsize=16)
def policy(allowed: tuple[str, ...], allow_loopback: bool) -> CallbackPolicy:
    """The policy for these settings (CIDRs already checked by the settings)."""
    return CallbackPolicy(
        tuple(ipaddress.ip_network(n, strict=False) for n in allowed), allow_loopback
    )


class GuardedResolver(ThreadedResolver):
    """aiohttp's resolver, refusing names that resolve to an address the policy refuses.

    `trusted` names (the operator's own proxies) are resolved without the check: through a
    proxy, the receiver's name is resolved by the proxy, and the literal check at delivery
    is what still applies."""

    def __init__(self, guard: CallbackPolicy, trusted: frozenset[str] = frozenset()) -> None:
        super().__init__()
        self._guard = guard
        self._trusted = trusted

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        """Resolve, then refuse the name if any of its addresses is refused."""
        results = await super().resolve(host, port, family)
        if host in self._trusted:
            return results
        for result in results:
            reason = self._guard.refusal(ipaddress.ip_address(result["host"]))
            if reason is not None:
                raise CallbackRefused(f"{host} resolves to {reason}")
        return results
