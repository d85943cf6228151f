"""DLR URL tokens: an unguessable, verifiable value bound to one send (batch); pure."""

from __future__ import annotations

import base64
import hashlib
import hmac


class DlrTokens:
    """Signs batch ids into path tokens and verifies them, with a key kept in the database."""

    def __init__(self, key: bytes) -> None:
        self._key = key

    def _mac(self, batch_id: str) -> str:
        digest = hmac.digest(self._key, b"dlr:" + batch_id.encode(), hashlib.sha256)
        return base64.urlsafe_b64encode(digest[:24]).decode().rstrip("=")

    def sign(self, batch_id: str) -> str:
        """The token for a batch: `<batch_id>.<mac>`."""
        return f"{batch_id}.{self._mac(batch_id)}"

    def verify(self, token: str) -> str | None:
        """The batch id a token was made for, or None if it was not made with this key."""
        batch_id, _, mac = token.partition(".")
        if not token.isascii() or not batch_id or not mac:
            return None
        return batch_id if hmac.compare_digest(mac, self._mac(batch_id)) else None
