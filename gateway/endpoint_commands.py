"""`sms-gateway endpoint ...`: a team's webhook endpoints from the command line (SPEC 10), on
the same store functions as the API, each change audited as cli:<OS user>."""

from __future__ import annotations

import argparse
from typing import Any

from .commands import _list_team, _print_json, _run, cli_actor, fail, load_settings
from .errors import GatewayError
from .platform.clock import parse_iso, time_bound
from .platform.secretbox import open_box
from .sending.validation import callback_guard, check_callback_url
from .store import Store
from .store import endpoints as store_endpoints


def add_parser(commands: Any, common: argparse.ArgumentParser) -> None:
    """The `endpoint` command and its actions."""
    endpoint = commands.add_parser("endpoint", help="webhook endpoints: a team's receivers")
    actions = endpoint.add_subparsers(dest="endpoint_command", required=True, metavar="ACTION")
    add = actions.add_parser("add", parents=[common], help="a new endpoint (prints its secret)")
    add.add_argument("team")
    add.add_argument("url")
    add.add_argument(
        "--events",
        help="comma-separated event types (default every one: "
        + ", ".join(store_endpoints.EVENT_TYPES)
        + ")",
    )
    add.add_argument("--description")
    add.set_defaults(func=cmd_endpoint_add)
    listed = actions.add_parser("list", parents=[common], help="list endpoints")
    listed.add_argument("--team", help="only this team's")
    listed.set_defaults(func=cmd_endpoint_list)
    for name, func, text in (
        ("enable", cmd_endpoint_enable, "enable a disabled endpoint again"),
        ("disable", cmd_endpoint_disable, "disable an endpoint (its waiting deliveries fail)"),
        ("rotate", cmd_endpoint_rotate, "a new secret; the old one signs for the overlap"),
        ("remove", cmd_endpoint_remove, "remove an endpoint"),
    ):
        action = actions.add_parser(name, parents=[common], help=text)
        action.add_argument("id")
        action.set_defaults(func=func)
    recover = actions.add_parser(
        "recover", parents=[common], help="queue again its deliveries that failed since a time"
    )
    recover.add_argument("id")
    recover.add_argument(
        "--since", required=True, help="ISO 8601, e.g. 2026-12-01T08:00:00Z (UTC without offset)"
    )
    recover.set_defaults(func=cmd_endpoint_recover)


def _events(raw: str | None) -> list[str]:
    if raw is None:
        return list(store_endpoints.EVENT_TYPES)
    events = [e.strip() for e in raw.split(",") if e.strip()]
    unknown = [e for e in events if e not in store_endpoints.EVENT_TYPES]
    if not events or unknown or len(set(events)) != len(events):
        fail(
            "--events must list distinct event types from: "
            + ", ".join(store_endpoints.EVENT_TYPES)
        )
    return events


def cmd_endpoint_add(args: argparse.Namespace) -> None:
    """Add an endpoint to a team; print it with its secret (shown this once)."""
    settings = load_settings(args, serving=False)
    try:
        url = check_callback_url(args.url, callback_guard(settings), "url")
    except GatewayError as exc:
        fail(exc.detail)
    assert url is not None
    events = _events(args.events)
    if args.description is not None and len(args.description) > 200:
        fail("--description must be 200 characters at most")
    team = _list_team(settings, args.team)
    actor = cli_actor()

    async def add(store: Store) -> dict[str, Any]:
        box = await open_box(store, settings)
        try:
            return await store_endpoints.create(
                store, box, str(team), url, events, args.description, actor
            )
        except store_endpoints.TooManyEndpoints:
            fail(f"team {team} has {store_endpoints.MAX_ENDPOINTS} endpoints, the most it may")

    _print_json(_run(settings, add))


def cmd_endpoint_list(args: argparse.Namespace) -> None:
    """Print the endpoints (every team's, or --team's) as JSON."""
    settings = load_settings(args, serving=False)
    team = _list_team(settings, args.team) if args.team else None
    _print_json(_run(settings, lambda s: store_endpoints.page(s, team, None, 10_000)))


def _found(endpoint: Any, endpoint_id: str) -> Any:
    if endpoint is None:
        fail(f"no webhook endpoint {endpoint_id!r}")
    return endpoint


def _set_enabled(args: argparse.Namespace, enabled: bool) -> None:
    settings = load_settings(args, serving=False)
    actor = cli_actor()
    change = {"enabled": enabled}
    changed = _run(settings, lambda s: store_endpoints.update(s, args.id, None, change, actor))
    _print_json(_found(changed, args.id))


def cmd_endpoint_enable(args: argparse.Namespace) -> None:
    """Enable an endpoint again (audited)."""
    _set_enabled(args, True)


def cmd_endpoint_disable(args: argparse.Namespace) -> None:
    """Disable an endpoint (audited); its waiting deliveries fail."""
    _set_enabled(args, False)


def cmd_endpoint_rotate(args: argparse.Namespace) -> None:
    """A new secret, printed this once."""
    settings = load_settings(args, serving=False)
    actor = cli_actor()

    async def rotate(store: Store) -> Any:
        box = await open_box(store, settings)
        return await store_endpoints.rotate(
            store, box, args.id, None, settings.webhook_secret_overlap, actor
        )

    _print_json(_found(_run(settings, rotate), args.id))


def cmd_endpoint_remove(args: argparse.Namespace) -> None:
    """Remove an endpoint."""
    settings = load_settings(args, serving=False)
    actor = cli_actor()
    if not _run(settings, lambda s: store_endpoints.delete(s, args.id, None, actor)):
        fail(f"no webhook endpoint {args.id!r}")
    print(f"webhook endpoint {args.id} removed")


def cmd_endpoint_recover(args: argparse.Namespace) -> None:
    """Queue again the endpoint's deliveries that failed since --since; print how many."""
    settings = load_settings(args, serving=False)
    bound = time_bound(args.since)
    if bound is None:
        fail("--since must be an ISO 8601 time, e.g. 2026-12-01T08:00:00Z")
    since = parse_iso(bound)
    actor = cli_actor()
    queued = _run(settings, lambda s: store_endpoints.recover(s, args.id, None, since, actor))
    if queued is None:
        fail(f"no webhook endpoint {args.id!r}")
    print(f"{queued} failed deliveries queued again (a running gateway sends them)")
