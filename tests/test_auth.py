"""JWT authentication and scopes: HS256, RS256 with a PEM key, ES256/RS256 from a JWKS URL."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from typing import Any

import jwt
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from .conftest import JWT_SECRET, ClientFactory, auth, mint, problem

Client = TestClient[web.Request, web.Application]


def unsigned(claims: dict[str, Any]) -> str:
    return jwt.encode(claims, key="", algorithm="none")


async def expect_401(resp: Any) -> dict[str, Any]:
    body = await problem(resp, 401, "unauthenticated")
    assert resp.headers["WWW-Authenticate"].startswith("Bearer")
    return body


async def test_no_token(client: Client) -> None:
    resp = await client.get("/messages")
    await expect_401(resp)
    assert "error=" not in resp.headers["WWW-Authenticate"]
    await expect_401(await client.get("/messages", headers={"Authorization": "Basic abc"}))
    await expect_401(await client.get("/messages", headers={"Authorization": "Bearer "}))


@pytest.mark.parametrize(
    "token",
    [
        "not-a-jwt",
        mint(secret="another-secret-that-is-also-long-enough-000"),
        unsigned(
            {
                "sub": "payments",
                "scope": "messages:read",
                "exp": int(time.time()) + 60,
                "aud": "sms-gateway",
            }
        ),
        mint(exp=int(time.time()) - 120),
        mint(exp=None),
        mint(aud="someone-else"),
        mint(aud=None),
        mint(nbf=int(time.time()) + 300),
        mint(sub=None),
        mint(algorithm="HS384"),
    ],
    ids=[
        "garbage",
        "bad-signature",
        "alg-none",
        "expired",
        "no-exp",
        "wrong-aud",
        "no-aud",
        "not-yet-valid",
        "no-sub",
        "alg-not-allowed",
    ],
)
async def test_bad_tokens_are_401(client: Client, token: str) -> None:
    await expect_401(await client.get("/messages", headers=auth(token)))


async def test_leeway_of_30_seconds(client: Client) -> None:
    resp = await client.get("/messages", headers=auth(mint(exp=int(time.time()) - 10)))
    assert resp.status == 200


async def test_issuer_checked_when_configured(make_client: ClientFactory) -> None:
    client = await make_client(jwt_issuer="https://idp.internal")
    resp = await client.get("/messages", headers=auth(mint(iss="https://evil")))
    await expect_401(resp)
    resp = await client.get("/messages", headers=auth(mint(iss="https://idp.internal")))
    await problem(resp, 403, "unknown_team")  # the token verified; the team is not registered


async def test_unknown_disabled_team_and_missing_scope_are_403(client: Client) -> None:
    await problem(await client.get("/messages", headers=auth(mint("ghost"))), 403, "unknown_team")
    send_only = auth(mint("payments", "messages:send"))
    resp = await client.get("/messages", headers=send_only)
    await problem(resp, 403, "insufficient_scope")
    assert 'error="insufficient_scope"' in resp.headers["WWW-Authenticate"]
    read_only = auth(mint("payments", "messages:read"))
    await problem(
        await client.post("/messages", json={"to": "0788123456", "text": "x"}, headers=read_only),
        403,
        "insufficient_scope",
    )
    await problem(await client.get("/admin/teams", headers=read_only), 403, "insufficient_scope")
    admin = auth(mint("root", "admin"))
    resp = await client.patch("/admin/teams/payments", json={"active": False}, headers=admin)
    assert resp.status == 200
    await problem(
        await client.get("/messages", headers=auth(mint("payments"))), 403, "team_disabled"
    )


async def test_scope_as_list_claim(client: Client) -> None:
    token = mint("payments", ["messages:read"])
    assert (await client.get("/messages", headers=auth(token))).status == 200


def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def public_pem(key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey) -> str:
    return (
        key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )


async def test_rs256_with_pem_public_key(make_client: ClientFactory) -> None:
    key = rsa_key()
    client = await make_client(
        jwt_secret=None, jwt_algorithms=("RS256",), jwt_public_key=public_pem(key)
    )
    good = mint("root", "admin", secret=key, algorithm="RS256")
    assert (await client.get("/admin/teams", headers=auth(good))).status == 200
    other = mint("root", "admin", secret=rsa_key(), algorithm="RS256")
    await expect_401(await client.get("/admin/teams", headers=auth(other)))
    # HS256 signed with the public key text: the classic algorithm-confusion attack.
    await expect_401(await client.get("/admin/teams", headers=auth(mint("root", "admin"))))


class JWKSServer:
    """An identity provider's JWKS endpoint that can rotate keys."""

    def __init__(self) -> None:
        self.keys: list[dict[str, Any]] = []
        self.fetches = 0

    async def handle(self, request: web.Request) -> web.Response:
        self.fetches += 1
        return web.json_response({"keys": self.keys})

    def add(self, kid: str, key: Any, alg: str) -> None:
        algorithm = jwt.get_algorithm_by_name(alg)
        jwk = json.loads(algorithm.to_jwk(key.public_key()))
        self.keys.append({**jwk, "kid": kid, "alg": alg, "use": "sig"})


@pytest.fixture
async def jwks() -> AsyncIterator[tuple[JWKSServer, str]]:
    server_state = JWKSServer()
    app = web.Application()
    app.router.add_get("/.well-known/jwks.json", server_state.handle)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    yield server_state, str(server.make_url("/.well-known/jwks.json"))
    await server.close()


async def test_jwks_keys_by_kid_cached_and_refreshed(
    make_client: ClientFactory, jwks: tuple[JWKSServer, str]
) -> None:
    state, url = jwks
    first = ec.generate_private_key(ec.SECP256R1())
    state.add("k1", first, "ES256")
    client = await make_client(
        jwt_secret=None, jwt_algorithms=("RS256", "ES256"), jwks_url=url, jwks_min_refresh=0.0
    )
    token = mint(
        "root",
        "admin",
        secret=first,
        algorithm="ES256",
        headers={"kid": "k1"},
    )
    for _ in range(3):
        assert (await client.get("/admin/teams", headers=auth(token))).status == 200
    assert state.fetches == 1  # cached
    second = rsa_key()
    state.add("k2", second, "RS256")
    rotated = mint(
        "root",
        "admin",
        secret=second,
        algorithm="RS256",
        headers={"kid": "k2"},
    )
    assert (await client.get("/admin/teams", headers=auth(rotated))).status == 200
    assert state.fetches == 2  # an unknown kid triggered one refresh
    stranger = mint(
        "root",
        "admin",
        secret=rsa_key(),
        algorithm="RS256",
        headers={"kid": "k3"},
    )
    await expect_401(await client.get("/admin/teams", headers=auth(stranger)))
    forged = mint(
        "root",
        "admin",
        secret=rsa_key(),
        algorithm="RS256",
        headers={"kid": "k2"},
    )
    await expect_401(await client.get("/admin/teams", headers=auth(forged)))


async def test_jwks_refresh_is_rate_limited(
    make_client: ClientFactory, jwks: tuple[JWKSServer, str]
) -> None:
    state, url = jwks
    key = rsa_key()
    state.add("k1", key, "RS256")
    client = await make_client(
        jwt_secret=None, jwt_algorithms=("RS256",), jwks_url=url, jwks_min_refresh=60.0
    )
    for n in range(5):
        token = mint(
            "root",
            "admin",
            secret=rsa_key(),
            algorithm="RS256",
            headers={"kid": f"random-{n}"},
        )
        await expect_401(await client.get("/admin/teams", headers=auth(token)))
    assert state.fetches == 1


async def test_hs256_and_jwks_side_by_side(
    make_client: ClientFactory, jwks: tuple[JWKSServer, str]
) -> None:
    state, url = jwks
    key = rsa_key()
    state.add("k1", key, "RS256")
    client = await make_client(
        jwt_secret=JWT_SECRET, jwt_algorithms=("HS256", "RS256"), jwks_url=url
    )
    assert (await client.get("/admin/teams", headers=auth(mint("root", "admin")))).status == 200
    rs = mint(
        "root",
        "admin",
        secret=key,
        algorithm="RS256",
        headers={"kid": "k1"},
    )
    assert (await client.get("/admin/teams", headers=auth(rs))).status == 200


async def test_a_withdrawn_jwks_key_stops_its_cached_tokens(
    make_client: ClientFactory, jwks: tuple[JWKSServer, str]
) -> None:
    state, url = jwks
    old = rsa_key()
    state.add("k1", old, "RS256")
    client = await make_client(
        jwt_secret=None, jwt_algorithms=("RS256",), jwks_url=url, jwks_min_refresh=0.0
    )
    token = mint("root", "admin", secret=old, algorithm="RS256", headers={"kid": "k1"})
    for _ in range(3):
        assert (await client.get("/admin/teams", headers=auth(token))).status == 200
    assert state.fetches == 1  # verified once, then remembered
    # The identity provider withdraws k1 (leaked) and signs with k2 from now on.
    new = rsa_key()
    state.keys.clear()
    state.add("k2", new, "RS256")
    fresh = mint("root", "admin", secret=new, algorithm="RS256", headers={"kid": "k2"})
    assert (await client.get("/admin/teams", headers=auth(fresh))).status == 200
    assert state.fetches == 2  # the unknown kid fetched the new set
    await expect_401(await client.get("/admin/teams", headers=auth(token)))


async def test_a_remembered_token_still_expires(make_client: ClientFactory) -> None:
    client = await make_client()
    # expired 28 s ago: inside the 30 s leeway for 2 s more
    token = mint("root", "admin", exp=int(time.time()) - 28)
    assert (await client.get("/admin/teams", headers=auth(token))).status == 200
    await asyncio.sleep(3)
    await expect_401(await client.get("/admin/teams", headers=auth(token)))
