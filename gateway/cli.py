"""The command line: serve, team, token, usage. Argument parsing only; the work lives elsewhere."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import NoReturn

from . import endpoint_commands
from .commands import (
    cmd_audit,
    cmd_audit_verify,
    cmd_backup,
    cmd_serve,
    cmd_suppression_add,
    cmd_suppression_import,
    cmd_suppression_list,
    cmd_suppression_remove,
    cmd_team_create,
    cmd_team_disable,
    cmd_team_list,
    cmd_team_rotate,
    cmd_team_update,
    cmd_token_issue,
    cmd_usage,
    parse_limit,
    parse_rate,
    parse_senders,
    parse_thresholds,
    parse_ttl,
)
from .teams.tokens import DEFAULT_SCOPE


def _add_team_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--name", default=argparse.SUPPRESS, help="display name")
    parser.add_argument(
        "--daily-limit",
        dest="daily_limit",
        type=parse_limit,
        default=argparse.SUPPRESS,
        metavar="N",
        help="SMS segments a day ('none' for unlimited)",
    )
    parser.add_argument(
        "--monthly-limit",
        dest="monthly_limit",
        type=parse_limit,
        default=argparse.SUPPRESS,
        metavar="N",
        help="SMS segments a month ('none' for unlimited)",
    )
    parser.add_argument(
        "--monthly-budget",
        dest="monthly_budget",
        type=parse_limit,
        default=argparse.SUPPRESS,
        metavar="RWF",
        help="RWF a month ('none' for unlimited)",
    )
    parser.add_argument(
        "--rate-limit",
        dest="rate_limit_per_second",
        type=parse_rate,
        default=argparse.SUPPRESS,
        metavar="PER_SECOND",
        help="requests per second ('none' for unlimited)",
    )
    parser.add_argument(
        "--callback-url",
        dest="callback_url",
        default=argparse.SUPPRESS,
        metavar="URL",
        help="default URL for delivery webhooks",
    )
    parser.add_argument(
        "--alert-thresholds",
        dest="alert_thresholds",
        type=parse_thresholds,
        default=argparse.SUPPRESS,
        metavar="PERCENTS",
        help="usage alert thresholds, e.g. 50,80,100 ('none' for no threshold alerts)",
    )
    parser.add_argument(
        "--senders",
        type=parse_senders,
        default=argparse.SUPPRESS,
        metavar="IDS",
        help="granted sender IDs, comma-separated, the first the default ('none': the "
        "gateway's own only)",
    )


class Parser(argparse.ArgumentParser):
    """argparse, with a mistake reported as one line (not a usage block first)."""

    def error(self, message: str) -> NoReturn:
        """One clear line on stderr and exit 2."""
        print(f"{self.prog}: error: {message} (see {self.prog} --help)", file=sys.stderr)
        raise SystemExit(2)


def build_parser() -> argparse.ArgumentParser:
    """The whole command tree."""
    common = Parser(add_help=False)
    common.add_argument(
        "--config",
        metavar="FILE",
        help="TOML file with settings (lower-case, no GATEWAY_ prefix); the environment wins",
    )
    parser = Parser(
        prog="sms-gateway", description="Internal SMS gateway in front of Bulk SMS DSC."
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = commands.add_parser("serve", parents=[common], help="start the HTTP server")
    serve.add_argument(
        "--sandbox",
        action="store_true",
        help="use the built-in simulated provider and print a ready-made token",
    )
    serve.set_defaults(func=cmd_serve)

    team = commands.add_parser("team", help="manage teams")
    team_commands = team.add_subparsers(dest="team_command", required=True, metavar="ACTION")
    create = team_commands.add_parser("create", parents=[common], help="register a team")
    create.add_argument("id", help="team id (a slug, used as the token's sub)")
    _add_team_options(create)
    create.set_defaults(func=cmd_team_create)
    listing = team_commands.add_parser("list", parents=[common], help="list teams")
    listing.add_argument("--json", action="store_true", help="print JSON instead of a table")
    listing.set_defaults(func=cmd_team_list)
    update = team_commands.add_parser("update", parents=[common], help="change a team")
    update.add_argument("id")
    _add_team_options(update)
    state = update.add_mutually_exclusive_group()
    state.add_argument(
        "--active", dest="active", action="store_true", default=None, help="enable the team"
    )
    state.add_argument("--inactive", dest="active", action="store_false", help="disable the team")
    update.set_defaults(func=cmd_team_update)
    disable = team_commands.add_parser("disable", parents=[common], help="disable a team")
    disable.add_argument("id")
    disable.set_defaults(func=cmd_team_disable)
    rotate = team_commands.add_parser(
        "rotate-secret", parents=[common], help="rotate a team's webhook secret"
    )
    rotate.add_argument("id")
    rotate.set_defaults(func=cmd_team_rotate)

    token = commands.add_parser("token", help="issue tokens")
    token_commands = token.add_subparsers(dest="token_command", required=True, metavar="ACTION")
    issue = token_commands.add_parser(
        "issue", parents=[common], help="print an HS256 token for a team"
    )
    issue.add_argument("--team", required=True, help="the team id (sub claim)")
    issue.add_argument(
        "--scope",
        default=DEFAULT_SCOPE,
        help=f"space-separated scopes (default: {DEFAULT_SCOPE!r})",
    )
    issue.add_argument(
        "--ttl", type=parse_ttl, default=3600, help="lifetime: seconds or 15m, 1h, 7d (default 1h)"
    )
    issue.set_defaults(func=cmd_token_issue)

    copy = commands.add_parser(
        "backup",
        parents=[common],
        help="copy the live SQLite database to a new file (consistent while the server runs)",
    )
    copy.add_argument("dest", metavar="DEST", help="the new file to write")
    copy.set_defaults(func=cmd_backup)

    usage = commands.add_parser(
        "usage", parents=[common], help="per-team messages, segments and cost for a month"
    )
    usage.add_argument(
        "--month",
        metavar="YYYY-MM",
        help="the month (default: the current one in GATEWAY_TIMEZONE)",
    )
    usage.add_argument(
        "--csv",
        action="store_true",
        help="print CSV (team,messages,segments,cost,currency) for billing",
    )
    usage.set_defaults(func=cmd_usage)

    audit = commands.add_parser(
        "audit", parents=[common], help="read the audit log (newest first), or verify its chain"
    )
    audit.add_argument("--team", help="only entries about this team")
    audit.add_argument("--actor", help="only entries by this actor (a token's sub, cli:USER)")
    audit.add_argument("--action", help="only this action, e.g. team.updated")
    audit.add_argument("--since", metavar="TIME", help="from this ISO 8601 date or time")
    audit.add_argument("--until", metavar="TIME", help="before this ISO 8601 date or time")
    audit.add_argument(
        "--limit", type=int, default=50, metavar="N", help="at most N entries (default 50)"
    )
    audit.add_argument("--json", action="store_true", help="print JSON instead of a table")
    audit.set_defaults(func=cmd_audit)
    audit_commands = audit.add_subparsers(dest="audit_command", metavar="ACTION")
    verify = audit_commands.add_parser(
        "verify",
        parents=[common],
        help="walk the hash chain; exit 1 naming the first entry altered or removed",
    )
    verify.set_defaults(func=cmd_audit_verify)

    suppression = commands.add_parser(
        "suppression", help="the suppression list: numbers never to be texted"
    )
    suppression_commands = suppression.add_subparsers(
        dest="suppression_command", required=True, metavar="ACTION"
    )
    team_help = "the team whose own list it is (default: the global list, every team)"
    add = suppression_commands.add_parser("add", parents=[common], help="suppress a number")
    add.add_argument("number")
    add.add_argument("--team", help=team_help)
    add.add_argument("--reason")
    add.set_defaults(func=cmd_suppression_add)
    remove = suppression_commands.add_parser("remove", parents=[common], help="text a number again")
    remove.add_argument("number")
    remove.add_argument("--team", help=team_help)
    remove.set_defaults(func=cmd_suppression_remove)
    listed = suppression_commands.add_parser(
        "list", parents=[common], help="list suppressed numbers (every list, or one)"
    )
    listed.add_argument("--team", help="only this team's list ('*': only the global list)")
    listed.add_argument(
        "--limit", type=int, default=100, metavar="N", help="at most N entries (default 100)"
    )
    listed.add_argument("--json", action="store_true", help="print JSON instead of a table")
    listed.set_defaults(func=cmd_suppression_list)
    imported = suppression_commands.add_parser(
        "import",
        parents=[common],
        help="suppress every number of a CSV file (one a line; all or nothing)",
    )
    imported.add_argument("file", help="the CSV file ('-' for standard input)")
    imported.add_argument("--team", help=team_help)
    imported.add_argument("--reason")
    imported.set_defaults(func=cmd_suppression_import)
    endpoint_commands.add_parser(commands, common)
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point of `sms-gateway` and `python -m gateway`."""
    args = build_parser().parse_args(argv)
    args.func(args)
