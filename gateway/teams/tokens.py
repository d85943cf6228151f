"""Tokens the gateway mints itself (HS256 with GATEWAY_JWT_SECRET): for the CLI's
`token issue` and the sandbox's printed tokens. Real deployments get theirs from an identity
provider; `auth.py` verifies both alike."""

from __future__ import annotations

import time
from typing import Any

import jwt

from ..platform.settings import ConfigError, Settings

SCOPES = ("messages:send", "messages:read", "messages:test", "admin")
DEFAULT_SCOPE = "messages:send messages:read"


def check_scopes(scope: str) -> str:
    """`scope` normalised (space-separated, known scopes only); ValueError with one line."""
    scopes = scope.split()
    if not scopes:
        raise ValueError("--scope must name at least one scope")
    unknown = sorted(set(scopes) - set(SCOPES))
    if unknown:
        raise ValueError(f"unknown scope(s) {', '.join(unknown)}; use {', '.join(SCOPES)}")
    return " ".join(scopes)


def issue_token(settings: Settings, subject: str, scope: str, ttl: int) -> str:
    """An HS256 token for `subject` signed with the configured secret."""
    if not settings.jwt_secret or len(settings.jwt_secret.encode()) < 32:
        raise ConfigError("GATEWAY_JWT_SECRET must be set (at least 32 bytes) to issue tokens")
    now = int(time.time())
    claims: dict[str, Any] = {"sub": subject, "scope": scope, "iat": now, "exp": now + ttl}
    if settings.jwt_audience:
        claims["aud"] = settings.jwt_audience
    if settings.jwt_issuer:
        claims["iss"] = settings.jwt_issuer
    return jwt.encode(claims, settings.jwt_secret, algorithm="HS256")
