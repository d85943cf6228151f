"""The command line: serve, team, token, usage. Argument parsing only; the work lives elsewhere."""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import logging
import os
import re
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import replace
from importlib import metadata
from typing import Any, NoReturn
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import jwt
from aiohttp import web

from . import logs
from .clock import utcnow
from .errors import GatewayError
from .keys import STORE
from .loop import install_fast_loop
from .proxies import Proxies
from .sandbox import signing_key as sandbox_signing_key
from .sandbox import stored_signing_key
from .settings import ConfigError, Settings
from .store import Store
from .store import teams as store_teams
from .store.backup import BackupError, backup
from .store.errors import StoreError
from .teams import check_team_fields
from .usage import billing_report, check_month, report_csv
from .validation import callback_guard

_log = logging.getLogger("gateway")
SANDBOX_TEAM = "sandbox"
DEFAULT_SCOPE = "messages:send messages:read"
_TTL = re.compile(r"(\d+)\s*([smhd]?)")
_TTL_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


def fail(message: str) -> NoReturn:
    """One clear line on stderr and a non-zero exit."""
    print(f"sms-gateway: error: {message}", file=sys.stderr)
    raise SystemExit(2)


def parse_ttl(text: str) -> int:
    """'90', '90s', '15m', '1h', '7d' → seconds."""
    match = _TTL.fullmatch(text.strip().lower())
    if not match or int(match.group(1)) <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a duration like 3600, 15m, 1h or 7d")
    return int(match.group(1)) * _TTL_UNITS[match.group(2)]


def parse_limit(text: str) -> int | None:
    """A non-negative whole number, or 'none'/'unlimited' for no limit."""
    if text.strip().lower() in ("none", "null", "unlimited"):
        return None
    if not text.strip().isdigit():
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number or 'none'")
    return int(text)


def parse_rate(text: str) -> float | None:
    """A positive number of requests per second, or 'none'."""
    if text.strip().lower() in ("none", "null", "unlimited"):
        return None
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number or 'none'") from None


def issue_token(settings: Settings, team: str, scope: str, ttl: int) -> str:
    """An HS256 token for `team` signed with the configured secret."""
    if not settings.jwt_secret or len(settings.jwt_secret.encode()) < 32:
        raise ConfigError("GATEWAY_JWT_SECRET must be set (at least 32 bytes) to issue tokens")
    now = int(time.time())
    claims: dict[str, Any] = {"sub": team, "scope": scope, "iat": now, "exp": now + ttl}
    if settings.jwt_audience:
        claims["aud"] = settings.jwt_audience
    if settings.jwt_issuer:
        claims["iss"] = settings.jwt_issuer
    return jwt.encode(claims, settings.jwt_secret, algorithm="HS256")


def load_settings(args: argparse.Namespace, *, serving: bool) -> Settings:
    """Settings from the environment and --config; a problem is one line and exit 2."""
    sandbox = bool(getattr(args, "sandbox", False))
    try:
        if serving:
            env = dict(os.environ)
            if (
                sandbox or env.get("GATEWAY_SANDBOX", "").lower() in ("1", "true", "yes", "on")
            ) and not any(
                env.get(k)
                for k in ("GATEWAY_JWT_SECRET", "GATEWAY_JWT_PUBLIC_KEY", "GATEWAY_JWKS_URL")
            ):
                # A sandbox with no key uses the one kept in its database (made on first start),
                # so the printed tokens work, survive a restart, and `token issue` can sign.
                database = Settings.from_env(env, args.config, sandbox=True, check=False).database
                try:
                    env["GATEWAY_JWT_SECRET"] = sandbox_signing_key(database)
                except Exception as exc:  # sqlite3 errors, permissions: one line
                    fail(f"cannot open database {database}: {exc}")
            return Settings.from_env(env, args.config, sandbox=sandbox or None)
        return Settings.from_env(
            os.environ, args.config, sandbox=True if sandbox else None, check=False
        )
    except ConfigError as exc:
        fail(str(exc))


def _run(settings: Settings, work: Callable[[Store], Awaitable[Any]]) -> Any:
    if settings.database != ":memory:" and not os.path.exists(settings.database):
        fail(
            f"no database at {settings.database}: `sms-gateway serve` creates it at its first "
            "start (check GATEWAY_DATABASE)"
        )

    async def main() -> Any:
        store = Store(settings.database)
        try:
            await store.open()
        except Exception as exc:  # sqlite3 errors, permissions: one line, not a traceback
            fail(f"cannot open database {settings.database}: {exc}")
        try:
            return await work(store)
        finally:
            await store.close()

    try:
        return asyncio.run(main())
    except GatewayError as exc:
        fail(exc.detail)


def _team_fields(args: argparse.Namespace, settings: Settings) -> dict[str, Any]:
    body: dict[str, Any] = {}
    for name in (
        "name",
        "daily_limit",
        "monthly_limit",
        "monthly_budget",
        "callback_url",
        "rate_limit_per_second",
    ):
        value = getattr(args, name, argparse.SUPPRESS)
        if value is not argparse.SUPPRESS:
            body[name] = value
    active = getattr(args, "active", None)
    if active is not None:
        body["active"] = active
    try:
        return check_team_fields(body, creating=False, guard=callback_guard(settings))
    except GatewayError as exc:
        fail(exc.detail)


def _print_json(data: Any) -> None:
    print(json.dumps(data, indent=2, ensure_ascii=False))


def cmd_serve(args: argparse.Namespace) -> None:
    """Start the HTTP server."""
    from .app import create_app
    from .logs import AccessLogger

    settings = load_settings(args, serving=True)
    install_fast_loop()
    try:
        proxies = Proxies.from_environment()
    except ValueError as exc:
        fail(f"HTTPS_PROXY / HTTP_PROXY: {exc}")
    logs.configure(settings.log_level, secrets=(*settings.secrets, *proxies.passwords()))
    try:
        app = create_app(settings)
    except ConfigError as exc:
        fail(str(exc))
    if settings.sandbox:

        async def banner(app: web.Application) -> None:
            store = app[STORE]
            team = await store_teams.find_team(store, SANDBOX_TEAM)
            if team is None:
                await store_teams.create_team(
                    store, SANDBOX_TEAM, {"name": "Sandbox team"}, utcnow()
                )
            token = issue_token(settings, SANDBOX_TEAM, DEFAULT_SCOPE, 7 * 86400)
            admin_token = issue_token(settings, "sandbox-admin", "admin", 7 * 86400)
            print(
                "\nSandbox mode: no SMS leaves this machine; sends go to a built-in simulator.\n"
                f"  team:        {SANDBOX_TEAM}\n"
                f"  token:       {token}\n"
                f"  admin token: {admin_token}\n"
                f"  dashboard:   {settings.public_url}/dashboard/ (sign in with the admin token)\n"
                "Try:\n"
                f"  export TOKEN={token}\n"
                f'  curl -s {settings.public_url}/messages -H "Authorization: Bearer $TOKEN" '
                "-H 'Content-Type: application/json' "
                '-d \'{"to": ["0788123456"], "text": "Hello from the sandbox"}\'\n',
                flush=True,
            )

        app.on_startup.append(banner)
    app.on_startup.append(_settle_memory)
    started = {
        "event": "start",
        "version": _version(),
        "listen": f"{settings.host}:{settings.port}",
        "public_url": settings.public_url,
        "database": "sqlite",
        "sandbox": settings.sandbox,
    }
    try:
        web.run_app(
            app,
            host=settings.host,
            port=settings.port,
            access_log_class=AccessLogger,
            # aiohttp's "Running on" banner, said when the port listens: a JSON line instead.
            print=lambda _banner: _log.info("gateway started", extra={"fields": started}),
        )
    except StoreError as exc:
        fail(f"database {settings.database}: {exc}")
    except OSError as exc:
        fail(f"cannot listen on {settings.host}:{settings.port}: {exc.strerror}")
    _log.info("gateway stopped", extra={"fields": {"event": "stop"}})


def _version() -> str:
    try:
        return metadata.version("sms-gateway")
    except metadata.PackageNotFoundError:  # running from a source tree
        return "unknown"


async def _settle_memory(app: web.Application) -> None:
    """After start-up: keep what exists out of the collector's way, and collect less often.

    A send makes many short-lived objects; the default thresholds spent a few per cent of the
    CPU in collections that found nothing to free (seen with py-spy under load).
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(20_000, 20, 50)


def cmd_team_create(args: argparse.Namespace) -> None:
    """Register a team and print it, with its webhook secret (shown this once)."""
    settings = load_settings(args, serving=False)
    try:
        fields = check_team_fields(
            {"id": args.id, **_team_fields(args, settings)},
            creating=True,
            guard=callback_guard(settings),
        )
    except GatewayError as exc:
        fail(exc.detail)
    team_id = fields.pop("id")
    team = _run(settings, lambda s: store_teams.create_team(s, team_id, fields, utcnow()))
    _print_json(team.public(with_secret=True))


def cmd_team_list(args: argparse.Namespace) -> None:
    """Print every team as a table."""
    settings = load_settings(args, serving=False)
    teams: list[store_teams.Team] = _run(settings, store_teams.list_teams)
    if args.json:
        _print_json([t.public() for t in teams])
        return
    header = ("ID", "NAME", "ACTIVE", "DAILY", "MONTHLY", "BUDGET", "CALLBACK")
    rows = [header] + [
        (
            t.id,
            t.name,
            "yes" if t.active else "no",
            _cell(t.daily_limit),
            _cell(t.monthly_limit),
            _cell(t.monthly_budget),
            t.callback_url or "-",
        )
        for t in teams
    ]
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    for row in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
    if not teams:
        print("(no teams yet: sms-gateway team create ID)")


def _cell(value: int | None) -> str:
    return "unlimited" if value is None else str(value)


def cmd_team_update(args: argparse.Namespace) -> None:
    """Change a team's fields and print it."""
    settings = load_settings(args, serving=False)
    fields = _team_fields(args, settings)
    if not fields:
        fail("nothing to change: give at least one option (see --help)")
    team = _run(settings, lambda s: store_teams.update_team(s, args.id, fields))
    _print_json(team.public())


def cmd_team_disable(args: argparse.Namespace) -> None:
    """Disable a team: its tokens get 403 from now on."""
    settings = load_settings(args, serving=False)
    team = _run(settings, lambda s: store_teams.update_team(s, args.id, {"active": False}))
    _print_json(team.public())


def cmd_team_rotate(args: argparse.Namespace) -> None:
    """Give a team a new webhook secret and print it (shown this once)."""
    settings = load_settings(args, serving=False)
    team = _run(settings, lambda s: store_teams.rotate_webhook_secret(s, args.id))
    _print_json(team.public(with_secret=True))


def cmd_token_issue(args: argparse.Namespace) -> None:
    """Print an HS256 token for a team."""
    settings = load_settings(args, serving=False)
    scopes = args.scope.split()
    if not scopes:
        fail("--scope must name at least one scope")
    unknown = sorted(set(scopes) - {"messages:send", "messages:read", "admin"})
    if unknown:
        fail(f"unknown scope(s) {', '.join(unknown)}; use messages:send, messages:read, admin")
    if not settings.jwt_secret:  # a sandbox's database keeps its own key
        key = _run(settings, stored_signing_key)
        if key:
            settings = replace(settings, jwt_secret=key)
    if "admin" not in scopes:
        team = _run(settings, lambda s: store_teams.find_team(s, args.team))
        if team is None:
            fail(
                f"no team {args.team!r} in {settings.database}; create it with "
                f"'sms-gateway team create {args.team}'"
            )
    try:
        print(issue_token(settings, args.team, " ".join(scopes), args.ttl))
    except ConfigError as exc:
        fail(str(exc))


def cmd_usage(args: argparse.Namespace) -> None:
    """Print the month's per-team usage for billing (a table, or CSV with --csv)."""
    settings = load_settings(args, serving=False)
    try:
        tz = ZoneInfo(settings.timezone)
    except (ZoneInfoNotFoundError, ValueError):
        fail(f"GATEWAY_TIMEZONE {settings.timezone!r} is not a known time zone")
    try:
        month = check_month(args.month, utcnow(), tz)
    except GatewayError as exc:
        fail(exc.detail)
    report = _run(settings, lambda s: billing_report(s, month, tz))
    if args.csv:
        sys.stdout.write(report_csv(report))
        return
    header = ("TEAM", "MESSAGES", "SEGMENTS", "COST (RWF)")
    rows = [header] + [
        (r["team"], str(r["messages"]), str(r["segments"]), str(r["cost"])) for r in report["data"]
    ]
    totals = report["totals"]
    rows.append(("total", str(totals["messages"]), str(totals["segments"]), str(totals["cost"])))
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    print(f"Usage for {month} ({settings.timezone})")
    for row in rows:
        print(
            "  ".join(
                cell.ljust(w) if i == 0 else cell.rjust(w)
                for i, (cell, w) in enumerate(zip(row, widths, strict=True))
            )
        )


def cmd_backup(args: argparse.Namespace) -> None:
    """Copy the live database to DEST, showing progress."""
    settings = load_settings(args, serving=False)
    if settings.database == ":memory:":
        fail("GATEWAY_DATABASE is :memory:; there is nothing to back up")
    shown = -1

    def progress(copied: int, total: int) -> None:
        nonlocal shown
        percent = 100 * copied // max(total, 1)
        if percent // 10 != shown // 10 or copied == total:
            shown = percent
            print(f"copied {copied:,} of {total:,} pages ({percent} %)", file=sys.stderr)

    try:
        pages, check = backup(settings.database, args.dest, progress)
    except BackupError as exc:
        fail(str(exc))
    if check != "ok":
        fail(f"the copy at {args.dest} failed its integrity check: {check}")
    print(f"backed up {settings.database} to {args.dest}: {pages:,} pages, integrity ok")


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
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point of `sms-gateway` and `python -m gateway`."""
    args = build_parser().parse_args(argv)
    args.func(args)
