"""The key that seals drop-in clients' DLR passwords comes from the configuration, never from
the database it protects; a database from before schema 12, which kept its key in `meta`, has
its sealed rows moved to the configured key at the next start and the old key deleted."""

from __future__ import annotations

import dataclasses
import json
import secrets
from pathlib import Path

import pytest

from gateway.platform.secretbox import CONTEXT, LEGACY_KEY, SecretBox, derive, open_box
from gateway.platform.settings import ConfigError, Settings
from gateway.store.sqlite import SqliteStore

from .conftest import SECRET_KEY, query


def file_bytes(path: str) -> bytes:
    return Path(path).read_bytes()


async def test_an_upgraded_database_is_resealed_and_forgets_its_key(tmp_path: Path) -> None:
    path = str(tmp_path / "gateway.db")
    store = SqliteStore(path)
    await store.open()
    legacy = secrets.token_bytes(32)
    old = SecretBox(legacy)
    try:
        await store.run("INSERT INTO meta (key, value) VALUES (?, ?)", (LEGACY_KEY, legacy.hex()))
        await store.run(
            "INSERT INTO teams (id, name, webhook_secret, created_at) VALUES ('t', 't', 's', 'x')"
        )
        target = {
            "url": "http://c/dlr",
            "username": "u",
            "password_sealed": old.seal("pw-1", CONTEXT),
        }
        await store.run(
            "INSERT INTO messages (id, batch_id, team_id, recipient, text, status, segments,"
            " encoding, charged_segments, cost, day, month, created_at, events, client_dlr)"
            " VALUES ('msg_1', 'bat_1', 't', '250788000001', 'x', 'sent', 1, 'gsm7', 1, 75,"
            " '2026-12-02', '2026-12', 'x', '[]', ?)",
            (json.dumps(target),),
        )
        settings = Settings(database=path, secret_key=SECRET_KEY)
        box = await open_box(store, settings)
    finally:
        await store.close()
    assert query(path, "SELECT COUNT(*) FROM meta WHERE key = ?", LEGACY_KEY) == [(0,)]
    stored = json.loads(query(path, "SELECT client_dlr FROM messages")[0][0])
    assert box.open(stored["password_sealed"], CONTEXT) == "pw-1"
    assert SecretBox(derive(SECRET_KEY.encode())).open(stored["password_sealed"], CONTEXT) == "pw-1"
    assert old.open(stored["password_sealed"], CONTEXT) is None  # the old key opens nothing now
    raw = file_bytes(path)
    assert SECRET_KEY.encode() not in raw and derive(SECRET_KEY.encode()) not in raw


def test_outside_the_sandbox_a_key_is_required() -> None:
    base = Settings(
        provider_api_key="k", provider_username="u", provider_password="p", jwt_secret="s" * 32
    )
    with pytest.raises(ConfigError, match="GATEWAY_SECRET_KEY"):
        base.validate()
    dataclasses.replace(base, secret_key="k" * 32).validate()
    with pytest.raises(ConfigError, match="at least 32 bytes"):
        dataclasses.replace(base, secret_key="short").validate()


async def test_a_key_file_works_and_the_sandbox_makes_its_own_beside_its_database(
    tmp_path: Path,
) -> None:
    key_file = tmp_path / "sealing.key"
    key_file.write_text(secrets.token_hex(32) + "\n")
    path = str(tmp_path / "gateway.db")
    store = SqliteStore(path)
    await store.open()
    try:
        from_file = await open_box(store, Settings(database=path, secret_key_file=str(key_file)))
        sealed = from_file.seal("pw", CONTEXT)
        again = await open_box(store, Settings(database=path, secret_key_file=str(key_file)))
        assert again.open(sealed, CONTEXT) == "pw"
        sandbox = Settings(database=path, sandbox=True)
        first = await open_box(store, sandbox)
        second = await open_box(store, sandbox)  # a restart: the same key
        assert second.open(first.seal("pw", CONTEXT), CONTEXT) == "pw"
        assert (tmp_path / "gateway.db.secret-key").stat().st_mode & 0o077 == 0
    finally:
        await store.close()
