"""Team rows: creation, lookup, updates, webhook secret rotation."""

from __future__ import annotations

import base64
import json
import secrets
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from ..platform.clock import iso
from . import audit
from .audit import GATEWAY, Actor
from .db import Row, Store, Tx
from .errors import Duplicate, NotFound

TEAM_FIELDS = (
    "name",
    "active",
    "daily_limit",
    "monthly_limit",
    "monthly_budget",
    "rate_limit_per_second",
    "callback_url",
    "alert_thresholds",
    "senders",
)
DEFAULT_THRESHOLDS = (80, 100)


@dataclass(frozen=True)
class Team:
    """A team as stored; `webhook_secret` is only shown on creation and rotation."""

    id: str
    name: str
    active: bool
    daily_limit: int | None
    monthly_limit: int | None
    monthly_budget: int | None
    rate_limit_per_second: float | None
    callback_url: str | None
    webhook_secret: str
    created_at: str
    alert_thresholds: tuple[int, ...] = DEFAULT_THRESHOLDS
    senders: tuple[str, ...] = ()  # granted sender IDs, the first the default

    def public(self, *, with_secret: bool = False) -> dict[str, Any]:
        """The team object of the API."""
        body: dict[str, Any] = {
            "id": self.id,
            "name": self.name,
            "active": self.active,
            "daily_limit": self.daily_limit,
            "monthly_limit": self.monthly_limit,
            "monthly_budget": self.monthly_budget,
            "rate_limit_per_second": self.rate_limit_per_second,
            "callback_url": self.callback_url,
            "alert_thresholds": list(self.alert_thresholds),
            "senders": list(self.senders),
            "created_at": self.created_at,
        }
        if with_secret:
            body["webhook_secret"] = self.webhook_secret
        return body


def new_webhook_secret() -> str:
    """`whsec_` + base64 of 32 random bytes, as the Standard Webhooks spec lays out."""
    return "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()


def _team(row: Row) -> Team:
    return Team(
        id=row["id"],
        name=row["name"],
        active=bool(row["active"]),
        daily_limit=row["daily_limit"],
        monthly_limit=row["monthly_limit"],
        monthly_budget=row["monthly_budget"],
        rate_limit_per_second=row["rate_limit_per_second"],
        callback_url=row["callback_url"],
        webhook_secret=row["webhook_secret"],
        created_at=row["created_at"],
        alert_thresholds=tuple(json.loads(row["alert_thresholds"])),
        senders=tuple(json.loads(row["senders"])),
    )


def _senders(value: Any) -> str:
    return json.dumps(list(value), separators=(",", ":"), ensure_ascii=False)


def _thresholds(value: Any) -> str:
    return json.dumps(sorted(set(int(v) for v in value)), separators=(",", ":"))


async def create_team(
    store: Store, team_id: str, fields: dict[str, Any], now: datetime, *, actor: Actor = GATEWAY
) -> Team:
    """Insert a team (and its audit entry); Duplicate if the id is taken."""
    values = {"name": team_id, "active": True, **fields}
    team = await store.write(_create, team_id, values, iso(now), actor)
    if team is None:
        raise Duplicate("team", team_id)
    return team


async def _create(
    tx: Tx, team_id: str, values: dict[str, Any], at: str, actor: Actor
) -> Team | None:
    if not await tx.execute(
        "INSERT INTO teams (id, name, active, daily_limit, monthly_limit, monthly_budget,"
        " rate_limit_per_second, callback_url, webhook_secret, created_at, alert_thresholds,"
        " senders) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (id) DO NOTHING",
        (
            team_id,
            values["name"],
            int(values["active"]),
            values.get("daily_limit"),
            values.get("monthly_limit"),
            values.get("monthly_budget"),
            _rate(values.get("rate_limit_per_second")),
            values.get("callback_url"),
            new_webhook_secret(),
            at,
            _thresholds(values.get("alert_thresholds", DEFAULT_THRESHOLDS)),
            _senders(values.get("senders", ())),
        ),
    ):
        return None
    team = await _read(tx, team_id)
    await audit.append(tx, actor, "team.created", team_id, team_id=team_id, after=team.public())
    return team


async def _read(tx: Tx, team_id: str) -> Team:
    row = await tx.fetchone("SELECT * FROM teams WHERE id = ?", (team_id,))
    if row is None:
        raise NotFound("team", team_id)
    return _team(row)


def _rate(value: Any) -> float | None:
    return None if value is None else float(value)


async def find_team(store: Store, team_id: str) -> Team | None:
    """The team with this id, or None."""
    row = await store.fetchone("SELECT * FROM teams WHERE id = ?", (team_id,))
    return _team(row) if row else None


async def current_team(store: Store, team_id: str) -> Team | None:
    """The team as stored now, for a request: a change made by any process (the CLI, another
    gateway) applies from the next request. A primary-key read on the loop's thread."""
    row = await store.read_now("SELECT * FROM teams WHERE id = ?", (team_id,))
    return _team(row) if row else None


async def get_team(store: Store, team_id: str) -> Team:
    """The team with this id; NotFound otherwise."""
    team = await find_team(store, team_id)
    if team is None:
        raise NotFound("team", team_id)
    return team


async def list_teams(store: Store) -> list[Team]:
    """Every team, by id."""
    return [_team(r) for r in await store.fetchall("SELECT * FROM teams ORDER BY id")]


async def update_team(
    store: Store, team_id: str, fields: dict[str, Any], *, actor: Actor = GATEWAY
) -> Team:
    """Change the given fields of a team, with an audit entry of what changed (none if nothing
    did); NotFound if there is no such team."""
    changes = {k: v for k, v in fields.items() if k in TEAM_FIELDS}
    if "active" in changes:
        changes["active"] = int(bool(changes["active"]))
    if "rate_limit_per_second" in changes:
        changes["rate_limit_per_second"] = _rate(changes["rate_limit_per_second"])
    if "alert_thresholds" in changes:
        changes["alert_thresholds"] = _thresholds(changes["alert_thresholds"])
    if "senders" in changes:
        changes["senders"] = _senders(changes["senders"])
    return await store.write(_update, team_id, changes, actor)


async def _update(tx: Tx, team_id: str, changes: dict[str, Any], actor: Actor) -> Team:
    before = await _read(tx, team_id)
    if not changes:
        return before
    assignments = ", ".join(f"{name} = ?" for name in changes)  # names from TEAM_FIELDS
    await tx.execute(
        f"UPDATE teams SET {assignments} WHERE id = ?",  # noqa: S608
        (*changes.values(), team_id),
    )
    after = await _read(tx, team_id)
    was, now = audit.changes(before.public(), after.public())
    if now:
        action = "team.updated"
        if "active" in now:
            action = "team.enabled" if now["active"] else "team.disabled"
        await audit.append(tx, actor, action, team_id, team_id=team_id, before=was, after=now)
    return after


async def rotate_webhook_secret(store: Store, team_id: str, *, actor: Actor = GATEWAY) -> Team:
    """Give the team a new webhook secret and return it (with the secret); the audit entry
    records the rotation, never the secret."""
    return await store.write(_rotate, team_id, actor)


async def _rotate(tx: Tx, team_id: str, actor: Actor) -> Team:
    if not await tx.execute(
        "UPDATE teams SET webhook_secret = ? WHERE id = ?", (new_webhook_secret(), team_id)
    ):
        raise NotFound("team", team_id)
    await audit.append(tx, actor, "team.webhook_secret_rotated", team_id, team_id=team_id)
    return await _read(tx, team_id)


class TeamCache:
    """Teams by id for the request path, valid while no other process has written the database.

    SQLite's data_version (asked on this process's writer, microseconds) moves whenever another
    connection commits: the CLI, another `serve` process. Then every entry is read again, so a
    team disabled, limited or re-keyed anywhere applies from the next request. This process's
    own team changes drop their entry (`forget`). Without a data_version (while the writer
    waits for a lock elsewhere) the team is read each time.

    On PostgreSQL there is no such number to ask cheaply, so the team is read on every request
    (a primary-key read), except on the send path (`rechecked`): there the cache lives until
    the database notifies a team change (store.teams_version, NOTIFY on a connection of its
    own: milliseconds after the change commits), because everything a send must not get wrong
    is checked again inside its reservation (the team active, its limits and budget). A team
    cached as missing or disabled is read again on every use, so a team created or enabled
    elsewhere is never refused for want of a notification.
    """

    def __init__(self) -> None:
        self._teams: dict[str, Team | None] = {}
        self._version: int | None = None
        self._send_teams: dict[str, Team] = {}
        self._send_version: int | None = None

    async def get(self, store: Store, team_id: str, *, rechecked: bool = False) -> Team | None:
        """The team as stored now (with `rechecked`: as last notified, for a use that the
        database checks again)."""
        version = store.data_version()
        if version is None and rechecked:
            return await self._for_send(store, team_id)
        if version is None or version != self._version:
            self._teams.clear()
            self._version = version
        if team_id in self._teams:
            return self._teams[team_id]
        team = await current_team(store, team_id)
        if version is not None and len(self._teams) < 10_000:
            self._teams[team_id] = team
        return team

    async def _for_send(self, store: Store, team_id: str) -> Team | None:
        version = store.teams_version()
        if version is None or version != self._send_version:
            self._send_teams.clear()
            self._send_version = version
        team = self._send_teams.get(team_id)
        if team is not None:
            return team
        team = await current_team(store, team_id)
        if team is None or not team.active or version is None:
            return team  # read again next time
        if len(self._send_teams) < 10_000:
            self._send_teams[team_id] = team
        return team

    def forget(self, team_id: str) -> None:
        """Drop a team that this process just changed."""
        self._teams.pop(team_id, None)
        self._send_teams.pop(team_id, None)
