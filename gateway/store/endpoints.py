"""Webhook endpoints (SPEC 10): a team's receivers, each with the event types it wants and its
own secret, sealed with GATEWAY_SECRET_KEY; what an attempt's answer does to its endpoint.

Every change is audited in its own transaction. Times that rules compare (a rotation's overlap,
how long an endpoint has been failing, a recover's bound) are the database's clock.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from ..platform.clock import iso, parse_iso
from ..platform.ids import lowest_ulid, ulid
from ..platform.secretbox import SecretBox
from . import audit
from .audit import GATEWAY, Actor
from .db import Row, Store, Tx
from .outbox import Attempt, NewWebhook, insert_webhook
from .outbox import record_attempt as record_delivery
from .shared import now_plus, where, with_clock
from .teams import new_webhook_secret

EVENT_TYPES = (
    "message.delivered",
    "message.undelivered",
    "message.failed",
    "message.expired",
    "message.canceled",
    "usage.threshold_reached",
    "usage.limit_reached",
)
DISABLED_EVENT = "endpoint.disabled"  # to GATEWAY_OPERATOR_WEBHOOK_URL
MAX_ENDPOINTS = 20  # a team's
AUDITED = ("url", "events", "description", "enabled", "disabled_reason")


def seal_context(endpoint_id: str) -> str:
    """What an endpoint's sealed secret is bound to: its own row."""
    return f"webhook_endpoint:{endpoint_id}"


def public(row: Row, secret: str | None = None) -> dict[str, Any]:
    """The API's endpoint object; `secret` only on creation and rotation."""
    body: dict[str, Any] = {
        "id": row["id"],
        "team": row["team_id"],
        "url": row["url"],
        "events": json.loads(row["events"]),
        "description": row["description"],
        "enabled": bool(row["enabled"]),
        "disabled_reason": row["disabled_reason"],
        "disabled_at": row["disabled_at"],
        "failing_since": row["failing_since"],
        "previous_secret_valid_until": row["previous_until"] if row["previous_secret"] else None,
        "created_at": row["created_at"],
        "updated_at": row["updated_at"],
    }
    if secret is not None:
        body["secret"] = secret
    return body


def _audited(row: Row) -> dict[str, Any]:
    shown = public(row)
    return {k: shown[k] for k in AUDITED}


class TooManyEndpoints(Exception):
    """The team has MAX_ENDPOINTS already."""


_INSERT = with_clock(
    "INSERT INTO webhook_endpoints (id, team_id, url, events, description, secret, created_at,"
    " updated_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, {now}, {now}) RETURNING *"
)


async def create(
    store: Store,
    box: SecretBox,
    team_id: str,
    url: str,
    events: Sequence[str],
    description: str | None,
    actor: Actor,
) -> dict[str, Any]:
    """A new endpoint, with its secret shown this once."""
    return await store.write(_create, box, team_id, url, list(events), description, actor)


async def _create(
    tx: Tx,
    box: SecretBox,
    team_id: str,
    url: str,
    events: list[str],
    description: str | None,
    actor: Actor,
) -> dict[str, Any]:
    count = await tx.fetchone(
        "SELECT COUNT(*) AS n FROM webhook_endpoints WHERE team_id = ?", (team_id,)
    )
    if count is not None and count["n"] >= MAX_ENDPOINTS:
        raise TooManyEndpoints(team_id)
    endpoint_id = "wep_" + ulid(datetime.now(UTC))
    secret = new_webhook_secret()
    row = await tx.fetchone(
        _INSERT,
        (
            endpoint_id,
            team_id,
            url,
            json.dumps(events),
            description,
            box.seal(secret, seal_context(endpoint_id)),
        ),
    )
    assert row is not None
    await audit.append(
        tx, actor, "webhook_endpoint.created", endpoint_id, team_id=team_id, after=_audited(row)
    )
    return public(row, secret)


async def get(store: Store, endpoint_id: str, team_id: str | None) -> dict[str, Any] | None:
    """One endpoint (of `team_id` only, when given)."""
    row = await _row(store, endpoint_id, team_id)
    return public(row) if row is not None else None


async def _row(store: Store | Tx, endpoint_id: str, team_id: str | None) -> Row | None:
    row = await store.fetchone("SELECT * FROM webhook_endpoints WHERE id = ?", (endpoint_id,))
    if row is None or (team_id is not None and row["team_id"] != team_id):
        return None
    return row


async def page(
    store: Store, team_id: str | None, after: str | None, limit: int
) -> list[dict[str, Any]]:
    """Endpoints by id (oldest first), of one team or of every team; `limit` at most."""
    clause, params = where(("team_id = ?", team_id), ("id > ?", after))
    rows = await store.fetchall(
        f"SELECT * FROM webhook_endpoints WHERE {clause} ORDER BY id LIMIT ?",  # noqa: S608
        (*params, limit),
    )
    return [public(r) for r in rows]


_UPDATE_URL_PENDING = "UPDATE webhooks SET url = ? WHERE endpoint_id = ? AND status = 'pending'"


async def update(
    store: Store, endpoint_id: str, team_id: str | None, changes: dict[str, Any], actor: Actor
) -> dict[str, Any] | None:
    """Change url, events, description or enabled; None if there is no such endpoint. A new URL
    applies to the deliveries still waiting too; disabling fails them (recover brings them back);
    enabling again clears why it was disabled."""
    return await store.write(_update, endpoint_id, team_id, changes, actor)


async def _update(
    tx: Tx, endpoint_id: str, team_id: str | None, changes: dict[str, Any], actor: Actor
) -> dict[str, Any] | None:
    before = await _row(tx, endpoint_id, team_id)
    if before is None:
        return None
    sets: list[str] = []
    params: list[Any] = []
    for field in ("url", "description", "events"):
        if field in changes:
            value = changes[field]
            params.append(json.dumps(value) if field == "events" else value)
            sets.append(f"{field} = ?{len(params)}")
    if sets:
        await tx.execute(
            with_clock(
                f"UPDATE webhook_endpoints SET {', '.join(sets)}, updated_at = {{now}}"  # noqa: S608
                f" WHERE id = ?{len(params) + 1}"
            ),
            (*params, endpoint_id),
        )
    if "url" in changes:
        await tx.execute(_UPDATE_URL_PENDING, (changes["url"], endpoint_id))
    enabled = changes.get("enabled")
    if enabled is True and not before["enabled"]:
        await tx.execute(_ENABLE, (endpoint_id,))
    after = await _row(tx, endpoint_id, None)
    assert after is not None
    if sets or (enabled is True and not before["enabled"]):
        action = (
            "webhook_endpoint.enabled"
            if set(changes) == {"enabled"}
            else ("webhook_endpoint.updated")
        )
        await audit.append(
            tx,
            actor,
            action,
            endpoint_id,
            team_id=after["team_id"],
            before=_audited(before),
            after=_audited(after),
        )
    if enabled is False and before["enabled"]:
        await disable(tx, endpoint_id, "operator", actor, None)
        after = await _row(tx, endpoint_id, None)
        assert after is not None
    return public(after)


_ENABLE = with_clock(
    "UPDATE webhook_endpoints SET enabled = 1, disabled_reason = NULL, disabled_at = NULL,"
    " failing_since = NULL, updated_at = {now} WHERE id = ?1"
)


async def delete(store: Store, endpoint_id: str, team_id: str | None, actor: Actor) -> bool:
    """Remove an endpoint: its waiting deliveries fail, its past ones stay (without it)."""
    return bool(await store.write(_delete, endpoint_id, team_id, actor))


async def _delete(tx: Tx, endpoint_id: str, team_id: str | None, actor: Actor) -> bool:
    before = await _row(tx, endpoint_id, team_id)
    if before is None:
        return False
    await _fail_pending(tx, endpoint_id, "the endpoint was deleted")
    await tx.execute("DELETE FROM webhook_endpoints WHERE id = ?", (endpoint_id,))
    await audit.append(
        tx,
        actor,
        "webhook_endpoint.deleted",
        endpoint_id,
        team_id=before["team_id"],
        before=_audited(before),
    )
    return True


_ROTATE = with_clock(
    "UPDATE webhook_endpoints SET previous_secret = CASE WHEN ?3 > 0 THEN secret END,"
    " previous_until = CASE WHEN ?3 > 0 THEN {until} END, secret = ?1, updated_at = {now}"
    " WHERE id = ?2 RETURNING *",
    until=now_plus("?3"),
)


async def rotate(
    store: Store,
    box: SecretBox,
    endpoint_id: str,
    team_id: str | None,
    overlap: float,
    actor: Actor,
) -> dict[str, Any] | None:
    """A new secret, shown this once; the one it replaces still signs for `overlap` seconds (a
    rotation within the overlap of an earlier one drops the oldest)."""
    return await store.write(_rotate, box, endpoint_id, team_id, overlap, actor)


async def _rotate(
    tx: Tx,
    box: SecretBox,
    endpoint_id: str,
    team_id: str | None,
    overlap: float,
    actor: Actor,
) -> dict[str, Any] | None:
    if await _row(tx, endpoint_id, team_id) is None:
        return None
    secret = new_webhook_secret()
    row = await tx.fetchone(
        _ROTATE, (box.seal(secret, seal_context(endpoint_id)), endpoint_id, float(overlap))
    )
    assert row is not None
    await audit.append(
        tx,
        actor,
        "webhook_endpoint.secret_rotated",
        endpoint_id,
        team_id=row["team_id"],
        after={"previous_secret_valid_until": row["previous_until"]},
    )
    return public(row, secret)


# Failed deliveries of the endpoint created since the bound, queued again due now, oldest first
# (the claim orders by due time, then id). A delivery still pending is not touched, so two
# recovers at once (any replicas) queue each delivery once.
# (One due time for all, read first: PostgreSQL's clock moves on while a statement runs, and the
# rows it updates are not in id order.)
_RECOVER = (
    "UPDATE webhooks SET status = 'pending', attempts = 0, next_attempt_at = ?3,"
    " claimed_by = NULL, claim_until = NULL"
    " WHERE endpoint_id = ?1 AND status = 'failed' AND id >= ?2"
)
_NOW = with_clock("SELECT {now} AS now")


async def recover(
    store: Store, endpoint_id: str, team_id: str | None, since: datetime, actor: Actor
) -> int | None:
    """Queue again every failed delivery to the endpoint since `since`; how many (None: no such
    endpoint). A disabled endpoint is enabled first: recovering is asking for delivery."""
    return await store.write(_recover, endpoint_id, team_id, since, actor)


async def _recover(
    tx: Tx, endpoint_id: str, team_id: str | None, since: datetime, actor: Actor
) -> int | None:
    if tx.dialect == "postgresql":
        # Recovers of one endpoint take turns: a second one then reads the first's result and
        # touches no row. (Left to the row locks, it would wait on the first's rows and keep
        # the ones it had re-checked locked until it ends, so the workers' claims, which skip
        # locked rows, would take newer deliveries first meanwhile.)
        await tx.execute("SELECT pg_advisory_xact_lock(hashtext(?))", ("recover " + endpoint_id,))
    row = await _row(tx, endpoint_id, team_id)
    if row is None:
        return None
    if not row["enabled"]:
        await tx.execute(_ENABLE, (endpoint_id,))
    now = await tx.fetchone(_NOW)
    assert now is not None
    count = await tx.execute(_RECOVER, (endpoint_id, "whk_" + lowest_ulid(since), now["now"]))
    await audit.append(
        tx,
        actor,
        "webhook_endpoint.recovered",
        endpoint_id,
        team_id=row["team_id"],
        after={"since": iso(since), "queued": count, "enabled": True},
    )
    return count


_FAIL_PENDING = (
    "UPDATE webhooks SET status = 'failed', next_attempt_at = NULL, claimed_by = NULL,"
    " claim_until = NULL, last_error = ? WHERE endpoint_id = ? AND status = 'pending'"
)


async def _fail_pending(tx: Tx, endpoint_id: str, reason: str) -> int:
    return await tx.execute(_FAIL_PENDING, (reason, endpoint_id))


_DISABLE = with_clock(
    "UPDATE webhook_endpoints SET enabled = 0, disabled_reason = ?2, disabled_at = {now},"
    " failing_since = NULL, updated_at = {now} WHERE id = ?1 AND enabled = 1 RETURNING *"
)
REASONS = {
    "gone": "the receiver answered 410 Gone",
    "failing": "every attempt failed for GATEWAY_WEBHOOK_DISABLE_AFTER",
    "operator": "disabled through the API",
}


async def disable(
    tx: Tx, endpoint_id: str, reason: str, actor: Actor, operator_url: str | None
) -> bool:
    """Disable an enabled endpoint in `tx`: its waiting deliveries fail, the change is audited
    and, for a reason of the gateway's own, `endpoint.disabled` goes to the operator's URL;
    False if it was disabled already."""
    before = await tx.fetchone("SELECT * FROM webhook_endpoints WHERE id = ?", (endpoint_id,))
    row = await tx.fetchone(_DISABLE, (endpoint_id, reason))
    if row is None or before is None:
        return False
    await _fail_pending(tx, endpoint_id, f"the endpoint was disabled: {REASONS[reason]}")
    await audit.append(
        tx,
        actor,
        "webhook_endpoint.disabled",
        endpoint_id,
        team_id=row["team_id"],
        before=_audited(before),
        after=_audited(row),
    )
    if operator_url and reason != "operator":
        at = row["disabled_at"]
        body = json.dumps(
            {"type": DISABLED_EVENT, "timestamp": at, "data": public(row)},
            ensure_ascii=False,
            separators=(",", ":"),
        )
        hook_id = "whk_" + ulid(parse_iso(at))
        await insert_webhook(
            tx,
            NewWebhook(
                hook_id, None, row["team_id"], DISABLED_EVENT, operator_url, body, 0, at, "operator"
            ),
        )
    return True


_FAILING = with_clock(
    "UPDATE webhook_endpoints SET failing_since = COALESCE(failing_since, {now})"
    " WHERE id = ?1 AND enabled = 1 RETURNING failing_since, {past} AS bound",
    past=now_plus("-?2"),
)


async def attempt_made(
    tx: Tx,
    endpoint_id: str,
    *,
    delivered: bool,
    gone: bool,
    disable_after: float,
    operator_url: str | None,
) -> bool:
    """What one attempt's answer does to its endpoint, in the transaction that records it: a
    success ends its failing spell; 410 disables it; a failure starts a spell, or, once the
    spell has lasted `disable_after` seconds, disables it. Whether it was disabled now."""
    if delivered:
        await tx.execute(
            "UPDATE webhook_endpoints SET failing_since = NULL"
            " WHERE id = ? AND failing_since IS NOT NULL",
            (endpoint_id,),
        )
        return False
    if gone:
        return await disable(tx, endpoint_id, "gone", GATEWAY, operator_url)
    row = await tx.fetchone(_FAILING, (endpoint_id, float(disable_after)))
    if row is not None and row["failing_since"] <= row["bound"]:
        return await disable(tx, endpoint_id, "failing", GATEWAY, operator_url)
    return False


async def record_attempt(
    store: Store,
    webhook_id: str,
    owner: str,
    endpoint_id: str,
    attempt: Attempt,
    *,
    gone: bool,
    disable_after: float,
    operator_url: str | None,
) -> bool:
    """outbox.record_attempt for a delivery to an endpoint, and what the answer does to the
    endpoint (attempt_made), in one transaction; False if the claim had lapsed."""
    return bool(
        await store.write(
            _record_attempt,
            webhook_id,
            owner,
            endpoint_id,
            attempt,
            gone,
            disable_after,
            operator_url,
        )
    )


async def _record_attempt(
    tx: Tx,
    webhook_id: str,
    owner: str,
    endpoint_id: str,
    attempt: Attempt,
    gone: bool,
    disable_after: float,
    operator_url: str | None,
) -> bool:
    if not await record_delivery(tx, webhook_id, owner, attempt):
        return False
    await attempt_made(
        tx,
        endpoint_id,
        delivered=attempt.delivered,
        gone=gone,
        disable_after=disable_after,
        operator_url=operator_url,
    )
    return True


async def attempts(store: Store, webhook_id: str) -> list[dict[str, Any]] | None:
    """A delivery's attempts, oldest first; None if there is no such delivery."""
    row = await store.fetchone("SELECT attempt_log FROM webhooks WHERE id = ?", (webhook_id,))
    if row is None:
        return None
    return attempt_log(row)


def attempt_log(row: Row) -> list[dict[str, Any]]:
    """A webhooks row's attempts (its `attempt_log`), oldest first."""
    logged: list[dict[str, Any]] = json.loads(row["attempt_log"]) if row["attempt_log"] else []
    return logged
