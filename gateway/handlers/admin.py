"""Admin: teams (usage and webhooks follow their own issues)."""

from __future__ import annotations

from aiohttp import web

from ..errors import NotFound
from ..keys import CLOCK, SETTINGS, STORE, TEAMS
from ..sending.validation import callback_guard
from ..store import teams as store_teams
from ..teams.fields import TEAM_ID, check_team_fields
from .common import actor_of, admin, json_response, read_json


def _team_id(request: web.Request) -> str:
    team_id = request.match_info["id"]
    if not TEAM_ID.fullmatch(team_id):
        raise NotFound(f"no team {team_id!r}", code="team_not_found")
    return team_id


async def create_team(request: web.Request) -> web.Response:
    """Register a team; the answer is the only time its webhook secret is shown, with rotation."""
    caller = await admin(request)
    fields = check_team_fields(
        await read_json(request), creating=True, guard=callback_guard(request.app[SETTINGS])
    )
    team_id = fields.pop("id")
    team = await store_teams.create_team(
        request.app[STORE],
        team_id,
        fields,
        request.app[CLOCK](),
        actor=actor_of(request, caller),
    )
    request.app[TEAMS].forget(team_id)
    return json_response(
        team.public(with_secret=True), status=201, headers={"Location": f"/admin/teams/{team.id}"}
    )


async def list_teams(request: web.Request) -> web.Response:
    """Every team."""
    await admin(request)
    teams = await store_teams.list_teams(request.app[STORE])
    return json_response({"data": [t.public() for t in teams], "next_cursor": None})


async def get_team(request: web.Request) -> web.Response:
    """One team."""
    await admin(request)
    team_id = _team_id(request)
    return json_response((await store_teams.get_team(request.app[STORE], team_id)).public())


async def update_team(request: web.Request) -> web.Response:
    """Change a team's name, limits, callback URL, alert thresholds or active flag; effective
    on the next request."""
    caller = await admin(request)
    team_id = _team_id(request)
    fields = check_team_fields(
        await read_json(request), creating=False, guard=callback_guard(request.app[SETTINGS])
    )
    team = await store_teams.update_team(
        request.app[STORE], team_id, fields, actor=actor_of(request, caller)
    )
    request.app[TEAMS].forget(team_id)
    return json_response(team.public())


async def rotate_webhook_secret(request: web.Request) -> web.Response:
    """Give the team a new webhook secret, shown in this answer only."""
    caller = await admin(request)
    team_id = _team_id(request)
    team = await store_teams.rotate_webhook_secret(
        request.app[STORE], team_id, actor=actor_of(request, caller)
    )
    request.app[TEAMS].forget(team_id)
    return json_response(team.public(with_secret=True))
