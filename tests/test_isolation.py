"""One client's bad input fails that client alone: a NUL (which PostgreSQL cannot store) in any
field, path or query is a 422 naming where, and changes nothing, while another team's
concurrent sends all succeed; an odd provider answer (a NUL in one message id) is cleaned and
hurts no one; a group call whose one item PostgreSQL refuses fails that item alone."""

from __future__ import annotations

import asyncio
import dataclasses
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from gateway.keys import STORE
from gateway.store import messages as store_messages

from .conftest import (
    ClientFactory,
    FakeProvider,
    auth,
    create_team,
    ledger_mismatches,
    mint,
    plain_batch,
    problem,
    query,
)

pytestmark = pytest.mark.both_databases

Client = TestClient[web.Request, web.Application]
GOOD = auth(mint("payments"))
BAD = auth(mint("ops"))
ADMIN = auth(mint("root", "admin"))
NUL = "a\u0000b"


@pytest.mark.parametrize(
    ("field", "body"),
    [
        ("text", {"to": "0788000001", "text": NUL}),
        ("reference", {"to": "0788000001", "text": "x", "reference": NUL}),
        ("to[1]", {"to": ["0788000001", NUL], "text": "x"}),
        ("sender", {"to": "0788000001", "text": "x", "sender": NUL}),
        ("callback_url", {"to": "0788000001", "text": "x", "callback_url": "http://a/" + NUL}),
    ],
)
async def test_a_nul_in_one_send_fails_that_send_alone(
    make_client: ClientFactory, database: str, field: str, body: dict[str, Any]
) -> None:
    client = await make_client()
    await create_team(client, "payments")
    await create_team(client, "ops")
    good = {"to": "0788000002", "text": "your code is 1234"}
    answers = await asyncio.gather(
        *(client.post("/messages", json=good, headers=GOOD) for _ in range(20)),
        client.post("/messages", json=body, headers=BAD),
    )
    assert [r.status for r in answers[:20]] == [201] * 20
    refused = await problem(answers[20], 422, "invalid_character")
    assert [e["field"] for e in refused["errors"]] == [field]
    assert query(database, "SELECT COUNT(*) FROM messages WHERE team_id = 'ops'") == [(0,)]
    assert ledger_mismatches(database) == []


async def test_a_nul_in_a_path_query_or_admin_field_is_a_422(
    make_client: ClientFactory, database: str
) -> None:
    client = await make_client()
    await create_team(client, "payments")
    for method, url, where in (
        ("GET", "/messages/msg_%00", "path"),
        ("GET", "/messages?batch_id=%00", "batch_id"),
        ("GET", "/messages?reference=a%00", "reference"),
        ("GET", "/messages?to=%00", "to"),
        ("POST", "/messages/msg_%00/cancel", "path"),
    ):
        refused = await problem(
            await client.request(method, url, headers=GOOD), 422, "invalid_character"
        )
        assert [e["field"] for e in refused["errors"]] == [where], url
    refused = await problem(
        await client.post("/admin/teams", json={"id": "x", "name": NUL}, headers=ADMIN),
        422,
        "invalid_character",
    )
    assert [e["field"] for e in refused["errors"]] == ["name"]
    patched = await client.patch("/admin/teams/payments", json={"name": NUL}, headers=ADMIN)
    await problem(patched, 422, "invalid_character")
    assert query(database, "SELECT id, name FROM teams") == [("payments", "payments")]
    # the drop-in endpoint answers in the provider's format
    form = {"api_key": mint("payments"), "recipients": "0788000001", "message": NUL}
    resp = await client.post("/api/v2/sms/send", data=form)
    assert resp.status == 400 and (await resp.json())["status"] == "error"


async def test_a_nul_in_one_provider_id_hurts_no_other_settlement(
    make_client: ClientFactory, provider: FakeProvider, database: str
) -> None:
    client = await make_client()
    await create_team(client, "payments")
    provider.body = {
        "status": "success",
        "response": [
            {
                "status": "sent",
                "messageid": "id\u0000\u0007-1",
                "recipient": "250788000001",
                "cost": 75,
                "message": "ok\u0000" + "x" * 2000,
            }
        ],
    }
    odd = client.post("/messages", json={"to": "0788000001", "text": "x"}, headers=GOOD)
    answers = await asyncio.gather(
        odd,
        *(
            client.post("/messages", json={"to": "0788000001", "text": "x"}, headers=GOOD)
            for _ in range(19)
        ),
    )
    assert [r.status for r in answers] == [201] * 20
    ids = {m["provider_message_id"] for r in answers for m in (await r.json())["messages"]}
    assert ids == {"id-1"}  # cleaned, the same for every one, stored as such
    assert query(database, "SELECT DISTINCT status FROM messages") == [("sent",)]
    assert ledger_mismatches(database) == []


@pytest.mark.postgresql
async def test_a_group_call_fails_only_the_item_postgresql_refuses(
    make_client: ClientFactory, database: str
) -> None:
    client = await make_client()
    await create_team(client, "payments")
    store = client.app[STORE]

    def batch(n: int, text: str) -> store_messages.Batch:
        message = store_messages.NewMessage(f"msg_iso_{n}", "250788000001", 1, 75)
        at = "2026-12-02T10:00:00.000Z"
        return dataclasses.replace(plain_batch(f"bat_iso_{n}", at, [message]), text=text)

    results = await asyncio.gather(
        *(store_messages.reserve(store, "prc_x", batch(n, "fine")) for n in range(10)),
        store_messages.reserve(store, "prc_x", batch(10, NUL)),  # past the API's check
        return_exceptions=True,
    )
    assert results[:10] == [None] * 10
    assert isinstance(results[10], Exception)
    assert query(database, "SELECT COUNT(*) FROM messages") == [(10,)]
