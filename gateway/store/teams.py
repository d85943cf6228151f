"""Team rows: creation, lookup, updates, webhook secret rotation."""

from __future__ import annotations

import base64
import secrets
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from ..platform.clock import iso
from .db import Row, Store
from .errors import Duplicate, NotFound

TEAM_FIELDS = (
    "name",
    "active",
    "daily_limit",
    "monthly_limit",
    "monthly_budget",
    "rate_limit_per_second",
    "callback_url",
)


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
    )


async def create_team(store: Store, team_id: str, fields: dict[str, Any], now: datetime) -> Team:
    """Insert a team; Duplicate if the id is taken."""
    values = {"name": team_id, "active": True, **fields}
    if not await store.run(
        "INSERT INTO teams (id, name, active, daily_limit, monthly_limit, monthly_budget,"
        " rate_limit_per_second, callback_url, webhook_secret, created_at)"
        " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (id) DO NOTHING",
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
            iso(now),
        ),
    ):
        raise Duplicate("team", team_id)
    return await get_team(store, team_id)


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


async def update_team(store: Store, team_id: str, fields: dict[str, Any]) -> Team:
    """Change the given fields of a team; NotFound if there is none."""
    changes = {k: v for k, v in fields.items() if k in TEAM_FIELDS}
    if "active" in changes:
        changes["active"] = int(bool(changes["active"]))
    if "rate_limit_per_second" in changes:
        changes["rate_limit_per_second"] = _rate(changes["rate_limit_per_second"])
    if changes:
        assignments = ", ".join(f"{name} = ?" for name in changes)  # names from TEAM_FIELDS
        updated = await store.run(
            f"UPDATE teams SET {assignments} WHERE id = ?",  # noqa: S608
            (*changes.values(), team_id),
        )
        if not updated:
            raise NotFound("team", team_id)
    return await get_team(store, team_id)


async def rotate_webhook_secret(store: Store, team_id: str) -> Team:
    """Give the team a new webhook secret and return it (with the secret)."""
    if not await store.run(
        "UPDATE teams SET webhook_secret = ? WHERE id = ?", (new_webhook_secret(), team_id)
    ):
        raise NotFound("team", team_id)
    return await get_team(store, team_id)


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
