"""POST /messages, GET /messages/{id}, GET /messages through the real app and a fake provider."""

from __future__ import annotations

import logging
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from .conftest import (
    API_KEY,
    JWT_SECRET,
    PASSWORD,
    USERNAME,
    ClientFactory,
    FakeProvider,
    auth,
    create_team,
    free_port,
    mint,
    problem,
)

pytestmark = pytest.mark.both_databases  # every test here runs on SQLite and PostgreSQL

Client = TestClient[web.Request, web.Application]
SEND = auth(mint("payments"))


async def send(client: Client, body: dict[str, Any], token: str | None = None) -> Any:
    return await client.post("/messages", json=body, headers=auth(token) if token else SEND)


async def test_send_reaches_provider_with_exact_form_fields(
    client: Client, provider: FakeProvider
) -> None:
    resp = await send(
        client,
        {
            "to": ["0788123456", "+250 788 123 457", "250788123456"],
            "text": "Your code is 4821",
            "sender": "ACME",
            "reference": "order-42",
        },
    )
    body = await resp.json()
    assert resp.status == 201, body
    assert len(provider.calls) == 1
    form = provider.calls[0]
    dlrurl = form.pop("dlrurl")
    assert form == {
        "api_key": API_KEY,
        "username": USERNAME,
        "password": PASSWORD,
        "recipients": "250788123456,250788123457",
        "message": "Your code is 4821",
        "sender": "ACME",
    }
    assert dlrurl.startswith(str(client.make_url("/dlr/" + body["batch_id"] + ".")))
    assert [m["to"] for m in body["messages"]] == ["250788123456", "250788123457"]
    assert body["total_cost"] == 150 and body["currency"] == "RWF"
    for message in body["messages"]:
        assert message["status"] == "sent"
        assert message["reference"] == "order-42" and message["sender"] == "ACME"
        assert message["segments"] == 1 and message["encoding"] == "gsm7"
        assert message["cost"] == 75 and message["provider_message_id"]
        assert [e["status"] for e in message["events"]] == ["sending", "sent"]
        assert message["sent_at"] and message["completed_at"] is None


async def test_default_sender_is_used_and_no_sender_when_unset(
    make_client: ClientFactory, provider: FakeProvider
) -> None:
    client = await make_client(provider_sender="COMPANY")
    await create_team(client, "payments")
    assert (await send(client, {"to": "0788123456", "text": "hi"})).status == 201
    assert provider.calls[-1]["sender"] == "COMPANY"
    other = await make_client()  # same database, the team is there already
    assert (await send(other, {"to": "0788123456", "text": "hi"})).status == 201
    assert "sender" not in provider.calls[-1]


async def test_per_recipient_outcomes_are_stored_and_returned(
    client: Client, provider: FakeProvider
) -> None:
    resp = await send(client, {"to": ["0788123456", "0788123413"], "text": "hello"})
    body = await resp.json()
    assert resp.status == 201
    sent, failed = body["messages"]
    assert sent["status"] == "sent" and sent["cost"] == 75
    assert failed["status"] == "failed" and failed["cost"] == 0
    assert failed["error"]["code"] == "provider_rejected"
    assert failed["completed_at"] is not None
    assert body["total_cost"] == 75
    for message in body["messages"]:
        stored = await client.get(f"/messages/{message['id']}", headers=SEND)
        assert stored.status == 200
        assert await stored.json() == message


async def test_provider_cost_is_what_is_charged(client: Client, provider: FakeProvider) -> None:
    provider.cost = "68"
    provider.charge_failed = True
    body = await (await send(client, {"to": ["0788123456", "0788123413"], "text": "x"})).json()
    assert [m["cost"] for m in body["messages"]] == [68, 68]
    assert body["total_cost"] == 136


@pytest.mark.parametrize(
    ("mode", "status", "code", "message_status"),
    [
        ("error", 502, "provider_error", "failed"),
        ("http401", 502, "provider_error", "failed"),
        ("redirect", 502, "provider_error", "failed"),
        ("http429", 503, "provider_unavailable", "failed"),
        ("http503", 503, "provider_unavailable", "failed"),
        ("http500", 504, "provider_timeout", "unknown"),
        ("http503-html", 504, "provider_timeout", "unknown"),
        ("html", 504, "provider_timeout", "unknown"),
        ("garbage", 504, "provider_timeout", "unknown"),
        ("drop", 504, "provider_timeout", "unknown"),
    ],
)
async def test_provider_failure_modes(
    client: Client,
    provider: FakeProvider,
    mode: str,
    status: int,
    code: str,
    message_status: str,
) -> None:
    provider.mode = mode
    resp = await send(client, {"to": ["0788123456", "0788123457"], "text": "hello"})
    body = await problem(resp, status, code)
    assert len(body["messages"]) == 2
    for message in body["messages"]:
        assert message["status"] == message_status
        assert message["error"]["code"] == code
        stored = await (await client.get(f"/messages/{message['id']}", headers=SEND)).json()
        assert stored["status"] == message_status
    if mode == "error":
        assert "Insufficient balance" in body["detail"]
    if code == "provider_unavailable":  # busy in its own words: nothing taken, refunded
        assert "busy" in body["detail"] and resp.headers["Retry-After"]
        usage = await (await client.get("/usage", headers=SEND)).json()
        assert usage["day"]["used"] == 0 and all(m["cost"] == 0 for m in body["messages"])


@pytest.mark.parametrize(
    ("mode", "status"), [("success", 201), ("partial", 201), ("error", 502), ("html", 504)]
)
async def test_answer_is_exactly_what_is_stored(
    client: Client, provider: FakeProvider, mode: str, status: int
) -> None:
    """The send's answer is built without reading the rows back; it must equal what GET shows."""
    provider.mode = mode
    resp = await send(
        client,
        {
            "to": ["0788123456", "0788123413", "0788123457"],
            "text": "Muraho ✓",
            "sender": "Payments",
            "reference": "order-17",
            "callback_url": "https://hooks.example.com/sms",
        },
    )
    assert resp.status == status
    body = await resp.json()
    assert len(body["messages"]) == 3
    for message in body["messages"]:
        stored = await client.get(f"/messages/{message['id']}", headers=SEND)
        assert await stored.json() == message
    listed = await (await client.get(f"/messages?batch_id={body['batch_id']}", headers=SEND)).json()
    assert listed["data"] == body["messages"][::-1]


async def test_provider_timeout_leaves_messages_unknown(
    make_client: ClientFactory, provider: FakeProvider
) -> None:
    client = await make_client(provider_timeout=0.2)
    await create_team(client, "payments")
    provider.delay = 1.0
    body = await problem(
        await send(client, {"to": "0788123456", "text": "hi"}), 504, "provider_timeout"
    )
    assert body["messages"][0]["status"] == "unknown"
    assert body["messages"][0]["cost"] == 75  # an unknown outcome stays charged


async def test_provider_refusing_connections_is_503(make_client: ClientFactory) -> None:
    client = await make_client(provider_url=f"http://127.0.0.1:{free_port()}/api/v2/sms/send")
    await create_team(client, "payments")
    body = await problem(
        await send(client, {"to": "0788123456", "text": "hi"}), 503, "provider_unavailable"
    )
    assert body["messages"][0]["status"] == "failed"
    assert body["messages"][0]["cost"] == 0


async def test_recipient_missing_from_answer_is_unknown(
    client: Client, provider: FakeProvider
) -> None:
    provider.mode = "partial"
    body = await (await send(client, {"to": ["0788123456", "0788123457"], "text": "x"})).json()
    assert [m["status"] for m in body["messages"]] == ["sent", "unknown"]
    assert body["messages"][1]["error"]["code"] == "provider_no_result"


async def test_large_send_is_split_into_provider_batches(
    client: Client, provider: FakeProvider
) -> None:
    provider.failed_suffix = "none"
    numbers = [f"0788{n:06d}" for n in range(250)]
    resp = await send(client, {"to": numbers, "text": "broadcast"})
    body = await resp.json()
    assert resp.status == 201, body
    assert sorted(len(c["recipients"].split(",")) for c in provider.calls) == [50, 100, 100]
    sent = {r for c in provider.calls for r in c["recipients"].split(",")}
    assert sent == {f"250788{n:06d}" for n in range(250)}
    assert len({c["dlrurl"] for c in provider.calls}) == 1
    assert len(body["messages"]) == 250 and body["total_cost"] == 250 * 75


async def test_batch_size_setting(make_client: ClientFactory, provider: FakeProvider) -> None:
    client = await make_client(provider_batch_size=2)
    await create_team(client, "payments")
    resp = await send(client, {"to": ["0788000001", "0788000002", "0788000003"], "text": "x"})
    assert resp.status == 201
    assert len(provider.calls) == 2


async def test_one_failed_batch_among_answered_ones_is_201(
    make_client: ClientFactory, provider: FakeProvider
) -> None:
    client = await make_client(provider_batch_size=1)
    await create_team(client, "payments")
    provider.error_for = "250788000002"
    resp = await send(client, {"to": ["0788000001", "0788000002"], "text": "x"})
    body = await resp.json()
    assert resp.status == 201, body
    assert [m["status"] for m in body["messages"]] == ["sent", "failed"]
    assert body["messages"][1]["error"]["code"] == "provider_error"
    assert body["total_cost"] == 75


@pytest.mark.parametrize(
    ("body", "code"),
    [
        ({"to": [], "text": "hi"}, "invalid_recipient"),
        ({"to": 250788123456, "text": "hi"}, "invalid_recipient"),
        ({"text": "hi"}, "invalid_recipient"),
        ({"to": ["0788123456"] * 1001, "text": "hi"}, "too_many_recipients"),
        ({"to": "0788123456"}, "invalid_text"),
        ({"to": "0788123456", "text": ""}, "invalid_text"),
        ({"to": "0788123456", "text": 42}, "invalid_text"),
        ({"to": "0788123456", "text": "a" * 1531}, "text_too_long"),
        ({"to": "0788123456", "text": "ä" * 10 + "€" * 766}, "text_too_long"),
        ({"to": "0788123456", "text": "😀" * 336}, "text_too_long"),
        ({"to": "0788123456", "text": "hi", "sender": "WAYTOOLONGSENDER"}, "invalid_sender"),
        ({"to": "0788123456", "text": "hi", "sender": "ab$"}, "invalid_sender"),
        ({"to": "0788123456", "text": "hi", "callback_url": "ftp://x"}, "invalid_callback_url"),
        ({"to": "0788123456", "text": "hi", "priority": "high"}, "unknown_field"),
        ({"to": "0788123456", "text": "hi", "reference": 7}, "validation_error"),
    ],
)
async def test_validation_rejects_and_sends_nothing(
    client: Client, provider: FakeProvider, body: dict[str, Any], code: str
) -> None:
    await problem(await send(client, body), 422, code)
    assert provider.calls == []
    listing = await (await client.get("/messages", headers=SEND)).json()
    assert listing["data"] == []


async def test_ten_segments_is_the_most(client: Client, provider: FakeProvider) -> None:
    provider.cost = 750
    resp = await send(client, {"to": "0788123456", "text": "a" * 1530})
    body = await resp.json()
    assert resp.status == 201
    assert body["messages"][0]["segments"] == 10
    assert body["messages"][0]["cost"] == 750


async def test_invalid_numbers_are_each_listed(client: Client, provider: FakeProvider) -> None:
    resp = await send(
        client, {"to": ["0788123456", "12345", "+44 7911 123456", None, "0252123456"], "text": "hi"}
    )
    body = await problem(resp, 422, "invalid_recipient")
    assert [e["field"] for e in body["errors"]] == ["to[1]", "to[2]", "to[3]", "to[4]"]
    assert body["errors"][0]["value"] == "12345"
    assert "not enabled" in body["errors"][1]["reason"]
    assert provider.calls == []


async def test_other_countries_when_configured(
    make_client: ClientFactory, provider: FakeProvider
) -> None:
    client = await make_client(allowed_regions=("RW", "KE"))
    await create_team(client, "payments")
    resp = await send(client, {"to": ["+254 712 345678", "0788123456"], "text": "hi"})
    assert resp.status == 201
    assert provider.calls[0]["recipients"] == "254712345678,250788123456"


async def test_bad_json_and_non_object(client: Client, provider: FakeProvider) -> None:
    resp = await client.post("/messages", data=b"{not json", headers=SEND)
    await problem(resp, 400, "invalid_json")
    resp = await client.post("/messages", data=b"", headers=SEND)
    await problem(resp, 400, "invalid_json")
    resp = await client.post("/messages", json=["0788123456"], headers=SEND)
    await problem(resp, 422, "validation_error")
    resp = await client.post("/messages", data=b"\xff\xfe", headers=SEND)
    await problem(resp, 400, "invalid_json")
    assert provider.calls == []


async def test_unicode_text_is_ucs2(client: Client, provider: FakeProvider) -> None:
    body = await (await send(client, {"to": "0788123456", "text": "Muraho 👋"})).json()
    assert body["messages"][0]["encoding"] == "ucs2"
    assert provider.calls[0]["message"] == "Muraho 👋"


async def test_other_team_gets_404(client: Client) -> None:
    body = await (await send(client, {"to": "0788123456", "text": "secret"})).json()
    message_id = body["messages"][0]["id"]
    other = auth(mint("alerts", "messages:read"))
    await problem(
        await client.get(f"/messages/{message_id}", headers=other), 404, "message_not_found"
    )
    listing = await (await client.get("/messages", headers=other)).json()
    assert listing == {"data": [], "next_cursor": None}
    mine = await client.get(f"/messages/{message_id}", headers=SEND)
    assert mine.status == 200
    await problem(await client.get("/messages/msg_nope", headers=SEND), 404, "message_not_found")


async def test_pagination_walks_every_message_newest_first(client: Client) -> None:
    ids: list[str] = []
    for n in range(7):
        body = await (
            await send(
                client,
                {
                    "to": [f"07880000{n:02d}", f"07881111{n:02d}"],
                    "text": f"n{n}",
                    "reference": f"r{n % 2}",
                },
            )
        ).json()
        ids.extend(m["id"] for m in body["messages"])
    seen: list[str] = []
    cursor = None
    pages = 0
    while True:
        query = "limit=3" + (f"&cursor={cursor}" if cursor else "")
        page = await (await client.get(f"/messages?{query}", headers=SEND)).json()
        pages += 1
        seen.extend(m["id"] for m in page["data"])
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert pages == 5
    assert seen == list(reversed(ids))


async def test_list_filters(client: Client, provider: FakeProvider) -> None:
    first = await (
        await send(
            client, {"to": ["0788123456", "0788123413"], "text": "a", "reference": "order-1"}
        )
    ).json()
    second = await (
        await send(client, {"to": "0788123457", "text": "b", "reference": "order-2"})
    ).json()

    async def ids(query: str) -> list[str]:
        resp = await client.get(f"/messages?{query}", headers=SEND)
        assert resp.status == 200, await resp.text()
        return [m["id"] for m in (await resp.json())["data"]]

    assert await ids("status=failed") == [first["messages"][1]["id"]]
    assert await ids("to=%2B250%20788%20123%20457") == [second["messages"][0]["id"]]
    assert await ids("reference=order-1") == [m["id"] for m in reversed(first["messages"])]
    assert await ids(f"batch_id={second['batch_id']}") == [second["messages"][0]["id"]]
    created = first["messages"][0]["created_at"]
    assert await ids(f"created_before={created}") == []
    assert len(await ids(f"created_after={created}")) == 3
    assert await ids("created_after=2999-01-01T00:00:00Z") == []
    assert await ids("status=sent&reference=order-2") == [second["messages"][0]["id"]]


@pytest.mark.parametrize(
    "query",
    [
        "limit=0",
        "limit=201",
        "limit=x",
        "status=lost",
        "cursor=%%%",
        "cursor=bm9wZQ",
        "created_after=yesterday",
        "to=123",
        "colour=blue",
    ],
)
async def test_list_rejects_bad_parameters(client: Client, query: str) -> None:
    await problem(await client.get(f"/messages?{query}", headers=SEND), 422, "invalid_parameter")


async def test_quota_refusal_sends_nothing(
    make_client: ClientFactory, provider: FakeProvider
) -> None:
    client = await make_client()
    await create_team(client, "payments", daily_limit=3)
    resp = await send(client, {"to": ["0788000001", "0788000002"], "text": "x"})
    assert resp.status == 201
    refused = await send(client, {"to": ["0788000003", "0788000004"], "text": "x"})
    body = await problem(refused, 429, "quota_exceeded")
    assert body["quota"] == "daily_limit"
    assert (body["limit"], body["used"], body["remaining"]) == (3, 2, 1)
    assert 1 <= int(refused.headers["Retry-After"]) <= 86400
    assert len(provider.calls) == 1


async def test_no_secret_reaches_logs_or_answers(
    client: Client, provider: FakeProvider, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    answers: list[str] = []

    async def record(resp: Any) -> None:
        answers.append(await resp.text())
        answers.append(str(dict(resp.headers)))

    await record(await send(client, {"to": ["0788123456", "0788123413"], "text": "x"}))
    for mode in ("error", "http401", "http500", "html", "drop"):
        provider.mode = mode
        await record(await send(client, {"to": "0788123456", "text": "x"}))
    provider.mode = "success"
    await record(await client.get("/messages", headers=SEND))
    await record(await client.get("/admin/teams", headers=auth(mint("root", "admin"))))
    await record(await client.get("/openapi.yaml"))
    await record(await client.post("/messages", data=b"nope", headers=SEND))
    text = "\n".join(answers) + "\n".join(r.getMessage() for r in caplog.records)
    text += "\n".join(str(r.args) for r in caplog.records)
    for secret in (PASSWORD, API_KEY, JWT_SECRET):
        assert secret not in text
    assert SEND["Authorization"].split()[1] not in text


async def test_one_422_lists_every_problem(client: Client, provider: FakeProvider) -> None:
    resp = await send(
        client,
        {
            "to": ["0788123456", "12", "0788000001", "not a number"],
            "text": "",
            "sender": "way-too-long-sender-id",
            "colour": "blue",
        },
    )
    body = await problem(resp, 422, "unknown_field")  # the first problem's code
    fields = [e["field"] for e in body["errors"]]
    assert fields == ["colour", "to[1]", "to[3]", "text", "sender"]
    assert provider.calls == []


async def test_a_form_post_is_415_saying_to_send_json(client: Client) -> None:
    resp = await client.post(
        "/messages", data={"to": "0788123456", "text": "hi"}, headers=SEND
    )  # a form, as `curl -d` sends without a Content-Type
    body = await problem(resp, 415, "unsupported_media_type")
    assert "Content-Type: application/json" in body["detail"]
    resp = await client.post(
        "/admin/teams",
        data="id=x",
        headers={**auth(mint("root", "admin")), "Content-Type": "text/plain"},
    )
    await problem(resp, 415, "unsupported_media_type")
