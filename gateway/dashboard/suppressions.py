"""The dashboard's suppression page: every list, a page at a time, and the forms to add,
remove and import numbers (each change audited as the operator's)."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from ..errors import GatewayError, NotFound
from ..keys import SETTINGS, STORE
from ..sending.suppression import check_number, check_reason, parse_import
from ..store import suppressions as store
from ..store import teams as store_teams
from ..teams.fields import TEAM_ID
from .session import form_with_csrf, operator, require_session
from .views import render_page

PAGE = 100


async def _page(
    request: web.Request,
    *,
    notice: str | None = None,
    error: str | None = None,
    form: dict[str, str] | None = None,
    status: int = 200,
) -> web.Response:
    app = request.config_dict
    after: tuple[str, str] | None = None
    cursor = request.query.get("after_team"), request.query.get("after_number")
    if cursor[0] and cursor[1]:
        after = (cursor[0], cursor[1])
    entries = await store.page_all(app[STORE], after, PAGE + 1)
    following = None
    if len(entries) > PAGE:
        list_key, number = store.key_of(entries[PAGE - 1])
        following = {"after_team": list_key, "after_number": number}
    values: dict[str, Any] = {
        "entries": entries[:PAGE],
        "next": following,
        "notice": notice,
        "error": error,
        "form": form or {},
    }
    return await render_page(request, "suppressions.html", values, status)


@require_session
async def suppressions(request: web.Request) -> web.Response:
    """Every suppression, the global list first."""
    return await _page(request)


async def _team(request: web.Request, raw: str) -> str | None:
    """The form's team: empty for every team (global); otherwise one that exists."""
    team = raw.strip()
    if not team:
        return None
    if (
        not TEAM_ID.fullmatch(team)
        or await store_teams.find_team(request.config_dict[STORE], team) is None
    ):
        raise NotFound(f"team: no team {team!r}", code="team_not_found")  # shown on the form
    return team


async def add(request: web.Request) -> web.Response:
    """Suppress one number for a team, or for every team."""
    fields = await form_with_csrf(request)
    app = request.config_dict
    try:
        team = await _team(request, fields.get("team", ""))
        number = check_number(fields.get("number", ""), app[SETTINGS])
        reason = check_reason(fields.get("reason") or None)
        _, new = await store.add(app[STORE], team, number, reason, await operator(request))
    except GatewayError as exc:
        return await _page(request, error=exc.detail, form=fields, status=422)
    where = "every team" if team is None else f"team {team}"
    notice = f"{number} suppressed for {where}." if new else f"{number} was already suppressed."
    return await _page(request, notice=notice)


async def remove(request: web.Request) -> web.Response:
    """Lift one suppression."""
    fields = await form_with_csrf(request)
    app = request.config_dict
    key = fields.get("list", "")
    team = None if key == store.GLOBAL else key
    number = fields.get("number", "")
    if not await store.remove(app[STORE], team, number, await operator(request)):
        return await _page(request, error=f"{number} is not on that list", status=404)
    return await _page(request, notice=f"{number} may be texted again.")


async def import_numbers(request: web.Request) -> web.Response:
    """Suppress the pasted numbers (one a line, or a CSV's first column), all or nothing."""
    fields = await form_with_csrf(request)
    app = request.config_dict
    try:
        team = await _team(request, fields.get("team", ""))
        reason = check_reason(fields.get("reason") or None)
        parsed = parse_import(fields.get("numbers", ""), app[SETTINGS])
        added, already = await store.import_numbers(
            app[STORE], team, parsed.numbers, reason, await operator(request)
        )
    except GatewayError as exc:
        detail = exc.detail
        lines = getattr(exc, "extra", {}).get("errors", [])
        named = [f"line {e['line']}" for e in lines if "line" in e]
        if named:
            detail += " (" + ", ".join(named[:20]) + ("…" if len(named) > 20 else "") + ")"
        return await _page(request, error=detail, form=fields, status=422)
    return await _page(request, notice=f"Imported: {added} added, {already} already suppressed.")
