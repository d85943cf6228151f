"""What each command of the CLI does: settings, a store for the command's work, and its output."""

from __future__ import annotations

import argparse
import asyncio
import getpass
import json
import os
import re
import socket
import sys
from collections.abc import Awaitable, Callable
from dataclasses import replace
from typing import Any, NoReturn
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from .errors import GatewayError, domain_error
from .platform.clock import time_bound, utcnow
from .platform.ids import ulid
from .platform.settings import ConfigError, Settings
from .provider.sandbox import signing_key as sandbox_signing_key
from .provider.sandbox import stored_signing_key
from .sending.suppression import check_number, check_reason, parse_import
from .sending.validation import callback_guard
from .store import Store, describe, is_postgres, make_store
from .store import audit as store_audit
from .store import suppressions as store_suppressions
from .store import teams as store_teams
from .store.backup import BackupError, backup
from .store.errors import StoreError
from .teams.fields import (
    audit_table,
    check_senders,
    check_team_fields,
    check_thresholds,
    suppressions_table,
    teams_table,
)
from .teams.tokens import check_scopes, issue_token
from .teams.usage import billing_report, check_month, report_csv, report_table

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


def parse_thresholds(text: str) -> list[int]:
    """'80,100' -> [80, 100]; 'none' -> [] (only the refusal's alert)."""
    if text.strip().lower() in ("none", "null", ""):
        return []
    try:
        return check_thresholds([int(part) for part in text.replace(" ", "").split(",")])
    except (ValueError, GatewayError):
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a list of distinct whole percents from 1 to 100, like 80,100"
        ) from None


def parse_senders(text: str) -> list[str]:
    """'PAYCO,PAYCO OTP' -> ['PAYCO', 'PAYCO OTP']; 'none' -> [] (the gateway's own only)."""
    if text.strip().lower() in ("none", "null", ""):
        return []
    try:
        return check_senders([part.strip() for part in text.split(",") if part.strip()])
    except GatewayError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a list of distinct sender IDs (1-11 letters, digits, spaces or "
            ".-&_, or up to 15 digits), like PAYCO,PAYCO OTP"
        ) from None


def cli_actor() -> store_audit.Actor:
    """This command's author for the audit log: cli:<OS user>, on this host."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):  # no name for this uid (a container)
        user = str(os.getuid())
    return store_audit.Actor(f"cli:{user}", "cli", socket.gethostname(), "cli_" + ulid(utcnow()))


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
                    fail(f"cannot open database {describe(database)}: {exc}")
            return Settings.from_env(env, args.config, sandbox=sandbox or None)
        return Settings.from_env(
            os.environ, args.config, sandbox=True if sandbox else None, check=False
        )
    except ConfigError as exc:
        fail(str(exc))


def _run(settings: Settings, work: Callable[[Store], Awaitable[Any]]) -> Any:
    database = settings.database
    if not is_postgres(database) and database != ":memory:" and not os.path.exists(database):
        fail(
            f"no database at {database}: `sms-gateway serve` creates it at its first "
            "start (check GATEWAY_DATABASE)"
        )

    async def main() -> Any:
        store = make_store(database)
        try:
            await store.open()
        except Exception as exc:  # driver errors, permissions: one line, not a traceback
            fail(f"cannot open database {describe(database)}: {exc}")
        try:
            return await work(store)
        finally:
            await store.close()

    try:
        return asyncio.run(main())
    except GatewayError as exc:
        fail(exc.detail)
    except StoreError as exc:
        error = domain_error(exc)
        fail(error.detail if error is not None else str(exc))


def _team_fields(args: argparse.Namespace, settings: Settings) -> dict[str, Any]:
    body: dict[str, Any] = {}
    for name in (
        "name",
        "daily_limit",
        "monthly_limit",
        "monthly_budget",
        "callback_url",
        "rate_limit_per_second",
        "alert_thresholds",
        "senders",
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
    from .serve import ServeError, serve

    settings = load_settings(args, serving=True)
    try:
        serve(settings)
    except ServeError as exc:
        fail(str(exc))


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
    actor = cli_actor()
    team = _run(
        settings, lambda s: store_teams.create_team(s, team_id, fields, utcnow(), actor=actor)
    )
    _print_json(team.public(with_secret=True))


def cmd_team_list(args: argparse.Namespace) -> None:
    """Print every team as a table."""
    settings = load_settings(args, serving=False)
    teams: list[store_teams.Team] = _run(settings, store_teams.list_teams)
    if args.json:
        _print_json([t.public() for t in teams])
    else:
        print(teams_table(teams))


def cmd_team_update(args: argparse.Namespace) -> None:
    """Change a team's fields and print it."""
    settings = load_settings(args, serving=False)
    fields = _team_fields(args, settings)
    if not fields:
        fail("nothing to change: give at least one option (see --help)")
    actor = cli_actor()
    team = _run(settings, lambda s: store_teams.update_team(s, args.id, fields, actor=actor))
    _print_json(team.public())


def cmd_team_disable(args: argparse.Namespace) -> None:
    """Disable a team: its tokens get 403 from now on."""
    settings = load_settings(args, serving=False)
    actor = cli_actor()
    team = _run(
        settings, lambda s: store_teams.update_team(s, args.id, {"active": False}, actor=actor)
    )
    _print_json(team.public())


def cmd_team_rotate(args: argparse.Namespace) -> None:
    """Give a team a new webhook secret and print it (shown this once)."""
    settings = load_settings(args, serving=False)
    actor = cli_actor()
    team = _run(settings, lambda s: store_teams.rotate_webhook_secret(s, args.id, actor=actor))
    _print_json(team.public(with_secret=True))


def cmd_token_issue(args: argparse.Namespace) -> None:
    """Print an HS256 token for a team."""
    settings = load_settings(args, serving=False)
    try:
        scope = check_scopes(args.scope)
    except ValueError as exc:
        fail(str(exc))
    if not settings.jwt_secret:  # a sandbox's database keeps its own key
        key = _run(settings, stored_signing_key)
        if key:
            settings = replace(settings, jwt_secret=key)
    if "admin" not in scope.split():
        team = _run(settings, lambda s: store_teams.find_team(s, args.team))
        if team is None:
            fail(
                f"no team {args.team!r} in {describe(settings.database)}; create it with "
                f"'sms-gateway team create {args.team}'"
            )
    try:
        print(issue_token(settings, args.team, scope, args.ttl))
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
    print(report_table(report, month, settings.timezone))


def cmd_backup(args: argparse.Namespace) -> None:
    """Copy the live database to DEST, showing progress."""
    settings = load_settings(args, serving=False)
    if settings.database == ":memory:":
        fail("GATEWAY_DATABASE is :memory:; there is nothing to back up")
    if is_postgres(settings.database):
        fail(
            "GATEWAY_DATABASE is PostgreSQL: back it up with pg_dump (pg_dump --format=custom "
            "--file=DEST DATABASE_URL), which takes a consistent snapshot while replicas run"
        )
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


def cmd_audit(args: argparse.Namespace) -> None:
    """Print the audit log's entries, newest first (a table, or JSON with --json)."""
    settings = load_settings(args, serving=False)
    bounds: dict[str, str | None] = {}
    for name in ("since", "until"):
        raw = getattr(args, name)
        bounds[name] = None if raw is None else time_bound(raw)
        if raw is not None and bounds[name] is None:
            fail(f"--{name} {raw!r} is not an ISO 8601 date or time, like 2026-12-01T08:00:00Z")
    if not 1 <= args.limit <= 100_000:
        fail("--limit must be from 1 to 100000")
    where = store_audit.AuditFilter(
        actor=args.actor,
        team=args.team,
        action=args.action,
        since=bounds["since"],
        until=bounds["until"],
    )
    rows = _run(settings, lambda s: store_audit.entries(s, where, args.limit))
    if args.json:
        _print_json(rows)
    else:
        print(audit_table(rows))


def cmd_audit_verify(args: argparse.Namespace) -> None:
    """Walk the chain: exit 0 if every link holds, 1 naming the first that does not."""
    settings = load_settings(args, serving=False)
    verdict: store_audit.Verdict = _run(settings, store_audit.verify)
    if verdict.ok:
        print(
            f"audit log ok: {verdict.entries:,} entries, head {verdict.head_seq} "
            f"{verdict.head_hash}"
        )
        return
    print(
        f"sms-gateway: audit log broken at entry {verdict.broken_seq}: {verdict.reason} "
        f"({verdict.entries:,} entries before it hold)",
        file=sys.stderr,
    )
    raise SystemExit(1)


def _list_team(settings: Settings, team: str | None) -> str | None:
    """--team: a team's own list (which must exist); none: the global list."""
    if team is None:
        return None

    async def exists(store: Store) -> bool:
        return await store_teams.find_team(store, team) is not None

    if not _run(settings, exists):
        fail(f"no team {team!r}")
    return team


def cmd_suppression_add(args: argparse.Namespace) -> None:
    """Suppress a number for a team (--team) or for every team; print the entry."""
    settings = load_settings(args, serving=False)
    try:
        number = check_number(args.number, settings)
        reason = check_reason(args.reason)
    except GatewayError as exc:
        fail(exc.detail)
    team = _list_team(settings, args.team)
    actor = cli_actor()
    entry, _ = _run(settings, lambda s: store_suppressions.add(s, team, number, reason, actor))
    _print_json(entry.public())


def cmd_suppression_remove(args: argparse.Namespace) -> None:
    """Lift a suppression; an error if the number was not on that list."""
    settings = load_settings(args, serving=False)
    try:
        number = check_number(args.number, settings)
    except GatewayError as exc:
        fail(exc.detail)
    team = _list_team(settings, args.team)
    actor = cli_actor()
    if not _run(settings, lambda s: store_suppressions.remove(s, team, number, actor)):
        where = "the global list" if team is None else f"team {team}'s list"
        fail(f"{number} is not on {where}")
    print(f"{number} may be texted again")


def cmd_suppression_list(args: argparse.Namespace) -> None:
    """Print suppressed numbers: every list (the global one first), or --team's."""
    settings = load_settings(args, serving=False)
    if not 1 <= args.limit <= 1_000_000:
        fail("--limit must be from 1 to 1000000")
    if args.team is None:
        entries = _run(settings, lambda s: store_suppressions.page_all(s, None, args.limit))
    else:
        team = None if args.team == store_suppressions.GLOBAL else _list_team(settings, args.team)
        entries = _run(settings, lambda s: store_suppressions.page(s, team, None, args.limit))
    if args.json:
        _print_json([e.public() for e in entries])
    else:
        print(suppressions_table(entries))


def cmd_suppression_import(args: argparse.Namespace) -> None:
    """Suppress every number of a CSV (one a line, in the first column), all or nothing."""
    settings = load_settings(args, serving=False)
    try:
        if args.file == "-":
            text = sys.stdin.read()
        else:
            with open(args.file, encoding="utf-8-sig") as handle:
                text = handle.read()
    except (OSError, UnicodeDecodeError) as exc:
        fail(f"cannot read {args.file}: {exc}")
    try:
        parsed = parse_import(text, settings)
        reason = check_reason(args.reason)
    except GatewayError as exc:
        lines = [e for e in exc.extra.get("errors", []) if "line" in e]
        for e in lines:
            print(f"line {e['line']}: {e['value']!r}: {e['reason']}", file=sys.stderr)
        fail(exc.detail)
    team = _list_team(settings, args.team)
    actor = cli_actor()
    added, already = _run(
        settings,
        lambda s: store_suppressions.import_numbers(s, team, parsed.numbers, reason, actor),
    )
    print(f"{added} added, {already} already suppressed ({parsed.lines} lines)")
