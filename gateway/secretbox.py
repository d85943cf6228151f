"""Encryption of what the gateway must keep for a while but never in clear (a drop-in client's
DLR password), with AES-GCM under a key kept apart from the rows it protects."""

from __future__ import annotations

import base64
import os

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

PREFIX = "v1."


class SecretBox:
    """Seals and opens short strings; each seal has its own random nonce."""

    def __init__(self, key: bytes) -> None:
        self._aead = AESGCM(key)

    def seal(self, text: str, context: str = "") -> str:
        """`text` encrypted and authenticated, bound to `context` (e.g. the row it belongs to)."""
        nonce = os.urandom(12)
        sealed = self._aead.encrypt(nonce, text.encode(), context.encode())
        return PREFIX + base64.urlsafe_b64encode(nonce + sealed).decode()

    def open(self, sealed: str, context: str = "") -> str | None:
        """The text inside, or None if it was not sealed by this key for this context."""
        if not sealed.startswith(PREFIX):
            return None
        try:
            raw = base64.urlsafe_b64decode(sealed[len(PREFIX) :])
            return self._aead.decrypt(raw[:12], raw[12:], context.encode()).decode()
        except (ValueError, InvalidTag):
            return None
