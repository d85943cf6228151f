"""Encryption of what the gateway must keep for a while but never in clear (a drop-in client's
DLR password), with AES-GCM under a key from the configuration, never from the database it
protects (`GATEWAY_SECRET_KEY` or `GATEWAY_SECRET_KEY_FILE`; the sandbox may make one)."""

from __future__ import annotations

import base64
import json
import logging
import os
import secrets
from collections.abc import Sequence
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from ..store import Store
from ..store.db import Tx, is_postgres
from .settings import ConfigError, Settings

PREFIX = "v1."
CONTEXT = "client_dlr"
LEGACY_KEY = "client_dlr_key"  # where versions before 12 kept the key: the database itself
log = logging.getLogger("gateway.secretbox")


class SecretBox:
    """Seals and opens short strings; each seal has its own random nonce. Opens what any of
    `also` sealed too (the key an upgrade moves away from)."""

    def __init__(self, key: bytes, also: Sequence[bytes] = ()) -> None:
        self._aead = AESGCM(key)
        self._others = [AESGCM(k) for k in also]

    def seal(self, text: str, context: str = "") -> str:
        """`text` encrypted and authenticated, bound to `context` (e.g. the row it belongs to)."""
        nonce = os.urandom(12)
        sealed = self._aead.encrypt(nonce, text.encode(), context.encode())
        return PREFIX + base64.urlsafe_b64encode(nonce + sealed).decode()

    def open(self, sealed: str, context: str = "") -> str | None:
        """The text inside, or None if it was not sealed by these keys for this context."""
        if not sealed.startswith(PREFIX):
            return None
        try:
            raw = base64.urlsafe_b64decode(sealed[len(PREFIX) :])
        except ValueError:
            return None
        for aead in (self._aead, *self._others):
            try:
                return aead.decrypt(raw[:12], raw[12:], context.encode()).decode()
            except (ValueError, InvalidTag):
                continue
        return None


def derive(secret: bytes) -> bytes:
    """The AES-256 key for a configured secret (any text of 32 bytes or more)."""
    hkdf = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=b"sms-gateway secretbox v1")
    return hkdf.derive(secret)


def configured_secret(settings: Settings) -> bytes | None:
    """GATEWAY_SECRET_KEY, or the contents of GATEWAY_SECRET_KEY_FILE (None if neither)."""
    if settings.secret_key is not None:
        return settings.secret_key.encode()
    if settings.secret_key_file is None:
        return None
    try:
        value = Path(settings.secret_key_file).read_text().strip()
    except OSError as exc:
        raise ConfigError(f"GATEWAY_SECRET_KEY_FILE cannot be read: {exc.strerror}") from None
    if len(value.encode()) < 32:
        raise ConfigError("GATEWAY_SECRET_KEY_FILE must hold at least 32 bytes")
    return value.encode()


def _sandbox_secret(settings: Settings) -> bytes:
    """A sandbox without a key makes one: in a file beside its SQLite database (so a restart and
    the processes sharing the file agree), or for this process alone."""
    if settings.database == ":memory:" or is_postgres(settings.database):
        return secrets.token_hex(32).encode()
    path = Path(settings.database + ".secret-key")
    if not path.exists():
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as out:
            out.write(secrets.token_hex(32))
    return path.read_text().strip().encode()


async def open_box(store: Store, settings: Settings) -> SecretBox:
    """The process's box. A database from before version 12 still holds the old key: what it
    sealed is sealed again under the configured key, and the old key is deleted from the
    database (kept in this process's memory to open what another, older replica seals)."""
    secret = configured_secret(settings)
    if secret is None:
        if not settings.sandbox:
            raise ConfigError(
                "GATEWAY_SECRET_KEY (or GATEWAY_SECRET_KEY_FILE) must be set: it seals drop-in "
                "clients' DLR passwords, and must not live in the database it protects "
                "(e.g. `openssl rand -hex 32`)"
            )
        secret = _sandbox_secret(settings)
    key = derive(secret)
    row = await store.fetchone("SELECT value FROM meta WHERE key = ?", (LEGACY_KEY,))
    if row is None:
        return SecretBox(key)
    legacy = bytes.fromhex(row["value"])
    box = SecretBox(key, also=[legacy])
    moved = await store.write(_reseal, box)
    log.info("moved %d sealed password(s) to the configured GATEWAY_SECRET_KEY", moved)
    return box


async def _reseal(tx: Tx, box: SecretBox) -> int:
    """Seal every stored sealed password again under the box's own key, and forget the key
    the database kept (one transaction: either all moved, or none)."""
    moved = 0
    for table, column, where in (
        ("messages", "client_dlr", "client_dlr IS NOT NULL"),
        ("webhooks", "payload", "kind = 'dlr' AND status = 'pending'"),
    ):
        rows = await tx.fetchall(f"SELECT id, {column} AS value FROM {table} WHERE {where}")  # noqa: S608 - fixed names
        for row in rows:
            data = json.loads(row["value"])
            sealed = data.get("password_sealed") if isinstance(data, dict) else None
            if not sealed:
                continue
            text = box.open(sealed, CONTEXT)
            data["password_sealed"] = box.seal(text, CONTEXT) if text is not None else ""
            await tx.execute(
                f"UPDATE {table} SET {column} = ? WHERE id = ?",  # noqa: S608 - fixed names
                (json.dumps(data), row["id"]),
            )
            moved += 1
    await tx.execute("DELETE FROM meta WHERE key = ?", (LEGACY_KEY,))
    return moved
