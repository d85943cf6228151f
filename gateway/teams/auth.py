"""JWT verification (HS256 secret, PEM public key or JWKS URL) and scope checks."""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import Any

import aiohttp
import jwt
from aiohttp import web
from cryptography.hazmat.primitives.serialization import load_pem_public_key

from ..errors import Forbidden, Unauthenticated
from ..platform.settings import Settings

log = logging.getLogger("gateway.auth")

LEEWAY_SECONDS = 30
VERIFIED_CACHE_SIZE = 10_000
SCOPES = frozenset({"messages:send", "messages:read", "admin"})


@dataclass(frozen=True)
class Principal:
    """Who is calling: the token's subject (a team id) and its scopes."""

    subject: str
    scopes: frozenset[str]


class JWKSCache:
    """Keys from a JWKS URL by `kid`; refetched when an unknown `kid` shows up (rate-limited)."""

    def __init__(self, session: aiohttp.ClientSession, url: str, min_refresh: float) -> None:
        self._session = session
        self._url = url
        self._min_refresh = min_refresh
        self._keys: dict[str | None, jwt.PyJWK] = {}
        self._fetched_at = float("-inf")
        self._lock = asyncio.Lock()
        self._document: Any = None
        self.version = 0  # grows each time the fetched key set differs from the last one

    async def _refresh(self) -> None:
        try:
            async with self._session.get(
                self._url, timeout=aiohttp.ClientTimeout(total=10)
            ) as resp:
                resp.raise_for_status()
                data = await resp.json(content_type=None)
            keyset = jwt.PyJWKSet.from_dict(data)
        except (aiohttp.ClientError, TimeoutError, ValueError, jwt.PyJWTError) as exc:
            log.warning("could not refresh the JWKS: %s", type(exc).__name__)
            return
        keys: dict[str | None, jwt.PyJWK] = {k.key_id: k for k in keyset.keys}
        if len(keyset.keys) == 1:
            keys.setdefault(None, keyset.keys[0])
        self._keys = keys
        self._fetched_at = time.monotonic()
        if data != self._document:  # a key rotated in or out: what was verified is redone
            self._document = data
            self.version += 1

    async def key(self, kid: str | None) -> jwt.PyJWK | None:
        """The key for `kid`, fetching the set when it is unknown and the cache may be stale."""
        if kid in self._keys:
            return self._keys[kid]
        async with self._lock:  # one fetch at a time; waiters see its result
            if kid not in self._keys and time.monotonic() - self._fetched_at >= self._min_refresh:
                await self._refresh()
        return self._keys.get(kid)


class Authenticator:
    """Verifies bearer tokens against the configured keys and algorithm allow-list."""

    def __init__(self, settings: Settings, session: aiohttp.ClientSession | None) -> None:
        self._algorithms = frozenset(settings.jwt_algorithms)
        self._secret = settings.jwt_secret
        self._audience = settings.jwt_audience
        self._issuer = settings.jwt_issuer
        self._public_key: Any = None
        if settings.jwt_public_key:  # checked by Settings.validate
            self._public_key = load_pem_public_key(settings.jwt_public_key.encode())
        self._verified: dict[str, tuple[Principal, float, float]] = {}
        self._jwks = (
            JWKSCache(session, settings.jwks_url, settings.jwks_min_refresh)
            if settings.jwks_url and session is not None
            else None
        )
        self._keyset_seen = 0

    async def _key_for(self, header: dict[str, Any]) -> Any:
        alg = header.get("alg")
        if alg not in self._algorithms:
            raise Unauthenticated(f"tokens signed with {alg!r} are not accepted")
        if str(alg).startswith("HS"):
            return self._secret
        if self._public_key is not None:
            return self._public_key
        if self._jwks is not None:
            kid = header.get("kid")
            found = await self._jwks.key(kid if isinstance(kid, str) else None)
            if found is None:
                raise Unauthenticated("the token's signing key (kid) is not known")
            return found
        raise Unauthenticated(f"tokens signed with {alg!r} are not accepted")

    async def verify(self, token: str) -> Principal:
        """Check signature, algorithm, exp/nbf (30 s leeway), iss and aud; return the caller.

        A token that verified is remembered until it expires (services reuse one token for
        many calls, and verifying is most of the cost of a small request): its nbf and exp
        are checked on every use, at most VERIFIED_CACHE_SIZE are kept, and all are forgotten
        when the JWKS's key set changes (a key withdrawn stops its tokens at once), as Envoy's
        JWT filter does.
        """
        if self._jwks is not None and self._jwks.version != self._keyset_seen:
            self._verified.clear()
            self._keyset_seen = self._jwks.version
        cached = self._verified.get(token)
        now = time.time()
        if cached is not None:
            principal, not_before, expires = cached
            if not_before - LEEWAY_SECONDS <= now < expires + LEEWAY_SECONDS:
                return principal
            del self._verified[token]
        principal, claims = await self._verify(token)
        if self._jwks is not None and self._jwks.version != self._keyset_seen:
            return principal  # the key set changed while verifying: not remembered
        if len(self._verified) >= VERIFIED_CACHE_SIZE:
            self._verified.pop(next(iter(self._verified)))  # the oldest entry
        self._verified[token] = (principal, float(claims.get("nbf", 0) or 0), float(claims["exp"]))
        return principal

    async def _verify(self, token: str) -> tuple[Principal, dict[str, Any]]:
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise Unauthenticated("the bearer token is not a JWT") from None
        key = await self._key_for(header)
        try:
            claims = jwt.decode(
                token,
                key,
                algorithms=[header["alg"]],
                audience=self._audience,
                issuer=self._issuer,
                leeway=LEEWAY_SECONDS,
                options={"require": ["exp", "sub"], "verify_aud": self._audience is not None},
            )
        except jwt.ExpiredSignatureError:
            raise Unauthenticated("the token has expired") from None
        except jwt.ImmatureSignatureError:
            raise Unauthenticated("the token is not valid yet") from None
        except jwt.MissingRequiredClaimError as exc:
            raise Unauthenticated(f"the token has no '{exc.claim}' claim") from None
        except jwt.InvalidAudienceError:
            raise Unauthenticated("the token is not meant for this gateway (aud)") from None
        except jwt.InvalidIssuerError:
            raise Unauthenticated("the token's issuer is not trusted (iss)") from None
        except jwt.InvalidSignatureError:
            raise Unauthenticated("the token's signature does not verify") from None
        except jwt.PyJWTError:
            raise Unauthenticated("the token is not valid") from None
        subject = claims.get("sub")
        if not isinstance(subject, str) or not subject:
            raise Unauthenticated("the token's 'sub' must name a team")
        raw_scope = claims.get("scope", "")
        if isinstance(raw_scope, str):
            scopes = frozenset(raw_scope.split())
        elif isinstance(raw_scope, list):
            scopes = frozenset(s for s in raw_scope if isinstance(s, str))
        else:
            scopes = frozenset()
        return Principal(subject, scopes), claims


def bearer_token(request: web.Request) -> str:
    """The token from `Authorization: Bearer ...`; 401 when absent or malformed."""
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    if not header:
        raise Unauthenticated("an Authorization: Bearer <JWT> header is required", error=None)
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthenticated(
            "the Authorization header must be 'Bearer <JWT>'", error="invalid_request"
        )
    return token.strip()


def require_scope(principal: Principal, scope: str) -> None:
    """403 insufficient_scope unless the caller holds `scope`."""
    if scope not in principal.scopes:
        raise Forbidden(
            f"this call needs the '{scope}' scope",
            code="insufficient_scope",
            headers={
                "WWW-Authenticate": 'Bearer realm="sms-gateway", error="insufficient_scope", '
                f'scope="{scope}"'
            },
        )
