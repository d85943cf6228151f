"""The provider's HTTP client against real servers: keep-alive, framing, failures, TLS."""

from __future__ import annotations

import asyncio
import base64
import datetime
import ipaddress
import os
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest
from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from yarl import URL

from gateway.provider.proxies import Proxies, Proxy
from gateway.provider.transport import MAX_BODY, ConnectFailed, ResponseLost, Upstream

from .conftest import free_port
from .proxy import ForwardProxy

pytestmark = pytest.mark.both_loops
FORM = "application/x-www-form-urlencoded"


class Server:
    """An aiohttp server that records what reached it and from which client port."""

    def __init__(self) -> None:
        self.requests: list[tuple[web.Request, bytes]] = []
        self.peers: set[int] = set()
        self.in_flight = 0
        self.most_in_flight = 0
        self.handler: Callable[[web.Request], Awaitable[web.StreamResponse]] = self.echo
        self.url = ""

    async def echo(self, request: web.Request) -> web.StreamResponse:
        return web.Response(text="ok:" + (await request.text()))

    async def handle(self, request: web.Request) -> web.StreamResponse:
        peer = request.transport.get_extra_info("peername") if request.transport else None
        self.peers.add(peer[1] if peer else 0)
        self.requests.append((request, await request.read()))
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        try:
            return await self.handler(request)
        finally:
            self.in_flight -= 1


async def serve(
    server: Server, ssl_context: ssl.SSLContext | None = None, **kwargs: float
) -> AsyncIterator[Server]:
    app = web.Application()
    app.router.add_post("/api/v2/sms/send", server.handle)
    runner = web.AppRunner(app, access_log=None, **kwargs)  # type: ignore[arg-type]
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port, ssl_context=ssl_context).start()
    scheme = "https" if ssl_context else "http"
    server.url = f"{scheme}://127.0.0.1:{port}/api/v2/sms/send?v=2"
    try:
        yield server
    finally:
        await runner.cleanup()


@pytest.fixture
async def server() -> AsyncIterator[Server]:
    async for s in serve(Server()):
        yield s


async def raw_server(
    answer: Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]],
) -> tuple[asyncio.Server, str]:
    """A TCP server that answers with whatever bytes `answer` writes."""
    srv = await asyncio.start_server(answer, "127.0.0.1", 0)
    port = srv.sockets[0].getsockname()[1]
    return srv, f"http://127.0.0.1:{port}/send"


async def read_request(reader: asyncio.StreamReader) -> bytes:
    head = await reader.readuntil(b"\r\n\r\n")
    length = next(
        int(line.split(b":")[1])
        for line in head.split(b"\r\n")
        if line.lower().startswith(b"content-length")
    )
    return head + await reader.readexactly(length)


async def test_request_carries_the_form_and_connections_are_kept_alive(server: Server) -> None:
    client = Upstream(server.url)
    try:
        for n in range(20):
            answer = await client.post(f"n={n}".encode(), FORM, 5)
            assert (answer.status, answer.body) == (200, f"ok:n={n}".encode())
    finally:
        await client.close()
    request, body = server.requests[0]
    assert request.method == "POST" and request.path_qs == "/api/v2/sms/send?v=2"
    assert request.host == server.url.split("/")[2]
    assert request.headers["Content-Type"] == FORM
    assert request.headers["User-Agent"] == "sms-gateway"
    assert body == b"n=0"
    assert len(server.peers) == 1  # one connection carried all twenty


async def test_pool_holds_at_most_limit_connections(server: Server) -> None:
    async def slow(request: web.Request) -> web.Response:
        await asyncio.sleep(0.05)
        return web.Response(text="slow")

    server.handler = slow
    client = Upstream(server.url, limit=3)
    try:
        answers = await asyncio.gather(*(client.post(b"x", FORM, 5) for _ in range(20)))
    finally:
        await client.close()
    assert all(a.body == b"slow" for a in answers)
    assert server.most_in_flight == 3 and len(server.peers) == 3


async def test_chunked_answer_is_read_whole(server: Server) -> None:
    async def chunked(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse()
        resp.enable_chunked_encoding()
        await resp.prepare(request)
        for part in (b'{"status": ', b'"success", ', b'"response": []}'):
            await resp.write(part)
        await resp.write_eof()
        return resp

    server.handler = chunked
    client = Upstream(server.url)
    try:
        assert (await client.post(b"x", FORM, 5)).body == b'{"status": "success", "response": []}'
        assert (await client.post(b"x", FORM, 5)).status == 200  # and the connection goes on
    finally:
        await client.close()
    assert len(server.peers) == 1


async def test_answer_ended_by_closing_and_interim_answers() -> None:
    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nuntil the end")
        await writer.drain()
        writer.close()

    srv, url = await raw_server(answer)
    client = Upstream(url)
    try:
        answer_ = await client.post(b"x", FORM, 5)
        assert (answer_.status, answer_.body) == (200, b"until the end")
    finally:
        await client.close()
        srv.close()


async def test_connection_close_and_idle_closes_are_not_reused() -> None:
    server = Server()

    async def closing(request: web.Request) -> web.Response:
        return web.Response(text="bye", headers={"Connection": "close"})

    server.handler = closing
    async for s in serve(server):
        client = Upstream(s.url)
        try:
            for _ in range(3):
                assert (await client.post(b"x", FORM, 5)).body == b"bye"
        finally:
            await client.close()
        assert len(s.peers) == 3
    idle = Server()
    async for s in serve(idle, keepalive_timeout=0.1):
        client = Upstream(s.url)
        try:
            await client.post(b"x", FORM, 5)
            await asyncio.sleep(0.4)  # the server closes the idle connection meanwhile
            assert (await client.post(b"y", FORM, 5)).body == b"ok:y"
        finally:
            await client.close()
        assert len(s.peers) == 2


@pytest.mark.parametrize(
    ("reply", "reason"),
    [
        (b"SMTP ready\r\n\r\n", "no whole answer"),
        (b"", "no whole answer"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nshort", "no whole answer"),
    ],
)
async def test_broken_answers_are_response_lost(reply: bytes, reason: str) -> None:
    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(reply)
        await writer.drain()
        writer.close()

    srv, url = await raw_server(answer)
    client = Upstream(url)
    try:
        with pytest.raises(ResponseLost, match=reason):
            await client.post(b"x", FORM, 5)
    finally:
        await client.close()
        srv.close()


async def test_oversized_answer_is_refused(server: Server) -> None:
    async def huge(request: web.Request) -> web.Response:
        return web.Response(body=b"x" * (MAX_BODY + 1))

    server.handler = huge
    client = Upstream(server.url)
    try:
        with pytest.raises(ResponseLost, match="over"):
            await client.post(b"x", FORM, 5)
    finally:
        await client.close()


async def test_refused_connection_is_connect_failed() -> None:
    client = Upstream(f"http://127.0.0.1:{free_port()}/send")
    try:
        with pytest.raises(ConnectFailed):
            await client.post(b"x", FORM, 5)
    finally:
        await client.close()


async def test_timeout_drops_the_connection(server: Server) -> None:
    slow_once = [True]

    async def slow(request: web.Request) -> web.Response:
        if slow_once.pop() if slow_once else False:
            await asyncio.sleep(1)
        return web.Response(text="late")

    server.handler = slow
    client = Upstream(server.url)
    try:
        with pytest.raises(TimeoutError):
            await client.post(b"x", FORM, 0.2)
        assert (await client.post(b"x", FORM, 5)).body == b"late"
    finally:
        await client.close()
    assert len(server.peers) == 2  # the timed-out connection was not reused


def self_signed(directory: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 and its key, as a provider's TLS would have."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


async def test_https_verifies_the_certificate(tmp_path: Path) -> None:
    cert, key = self_signed(tmp_path)
    server_tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_tls.load_cert_chain(cert, key)
    async for s in serve(Server(), ssl_context=server_tls):
        trusted = Upstream(s.url, ssl_context=ssl.create_default_context(cafile=str(cert)))
        untrusted = Upstream(s.url)  # the system's CAs do not know this certificate
        try:
            assert (await trusted.post(b"a=1", FORM, 5)).body == b"ok:a=1"
            assert (await trusted.post(b"a=2", FORM, 5)).body == b"ok:a=2"
            with pytest.raises(ConnectFailed):
                await untrusted.post(b"a=3", FORM, 5)
        finally:
            await trusted.close()
            await untrusted.close()
        assert len(s.requests) == 2 and len(s.peers) == 1


def test_only_absolute_http_urls() -> None:
    for url in ("ftp://example.com/x", "/relative", "https:///no-host"):
        with pytest.raises(ValueError, match="absolute"):
            Upstream(url)


@pytest.fixture
async def proxy() -> AsyncIterator[ForwardProxy]:
    running = await ForwardProxy().start()
    yield running
    await running.stop()


async def test_http_provider_through_the_proxy(server: Server, proxy: ForwardProxy) -> None:
    client = Upstream(server.url, proxy=Proxy.parse(f"http://ops:s3cret@{proxy.url[7:]}"))
    try:
        for n in range(3):
            assert (await client.post(f"n={n}".encode(), FORM, 5)).body == f"ok:n={n}".encode()
    finally:
        await client.close()
    assert proxy.seen[0] == f"POST {server.url}"  # absolute form: it went through the proxy
    assert proxy.authorizations[0] == "Basic " + base64.b64encode(b"ops:s3cret").decode()
    assert [body for _, body in server.requests] == [b"n=0", b"n=1", b"n=2"]


async def test_https_provider_through_a_connect_tunnel(tmp_path: Path, proxy: ForwardProxy) -> None:
    cert, key = self_signed(tmp_path)
    server_tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_tls.load_cert_chain(cert, key)
    async for s in serve(Server(), ssl_context=server_tls):
        client = Upstream(
            s.url,
            proxy=Proxy.parse(proxy.url),
            ssl_context=ssl.create_default_context(cafile=str(cert)),
        )
        try:
            assert (await client.post(b"a=1", FORM, 5)).body == b"ok:a=1"
        finally:
            await client.close()
        port = s.url.split("/")[2].split(":")[1]
        assert proxy.seen == [f"CONNECT 127.0.0.1:{port}"]
        assert len(s.requests) == 1


async def test_a_proxy_that_refuses_or_hangs_the_tunnel_sent_nothing(
    server: Server, proxy: ForwardProxy
) -> None:
    https_url = server.url.replace("http://", "https://")  # only https tunnels with CONNECT
    proxy.refuse_connect = True
    client = Upstream(https_url, proxy=Proxy.parse(proxy.url))
    try:
        with pytest.raises(ConnectFailed):
            await client.post(b"x", FORM, 5)
        proxy.refuse_connect, proxy.hang_on_connect = False, True
        with pytest.raises(ConnectFailed, match=r"within 0\.3 s"):  # timed out while connecting
            await client.post(b"x", FORM, 0.3)
    finally:
        await client.close()
    assert len(proxy.seen) == 2 and server.requests == []


async def test_a_proxy_that_is_down_is_connect_failed(server: Server) -> None:
    client = Upstream(server.url, proxy=Proxy.parse(f"http://127.0.0.1:{free_port()}"))
    try:
        with pytest.raises(ConnectFailed):
            await client.post(b"x", FORM, 5)
    finally:
        await client.close()
    assert server.requests == []


def proxies_from(monkeypatch: pytest.MonkeyPatch, **variables: str) -> Proxies:
    """Proxies read from an environment holding only these proxy variables."""
    for name in list(os.environ):
        if name.lower().endswith("_proxy"):
            monkeypatch.delenv(name)
    for name, value in variables.items():
        monkeypatch.setenv(name, value)
    return Proxies.from_environment()


def test_proxies_read_from_the_environment_once(monkeypatch: pytest.MonkeyPatch) -> None:
    proxies = proxies_from(
        monkeypatch,
        HTTPS_PROXY="http://upper:3128",
        https_proxy="http://u:p@lower:3128",  # the lower-case name wins
        HTTP_PROXY="plain:8080",  # no scheme: http
        NO_PROXY="internal.example, .corp.example,10.1.2.3",
    )
    https = proxies.for_url(URL("https://bulksms.schooldream.co.rw/api/v2/sms/send"))
    assert https is not None and str(https.url) == "http://lower:3128"
    assert https.headers == {"Proxy-Authorization": "Basic dTpw"}  # u:p
    assert proxies.passwords() == ["p"]
    plain = proxies.for_url(URL("http://hooks.example/x"))
    assert plain is not None and str(plain.url) == "http://plain:8080"
    for bypassed in (
        "http://internal.example/hook",
        "https://a.corp.example/hook",
        "http://10.1.2.3:8080/hook",
    ):
        assert proxies.for_url(URL(bypassed)) is None, bypassed
    assert proxies.hosts() == {"lower", "plain"}
    assert proxies_from(monkeypatch).for_url(URL("https://example.com/")) is None
    everything = proxies_from(monkeypatch, HTTPS_PROXY="http://p:1", NO_PROXY="*")
    assert everything.for_url(URL("https://example.com/")) is None
    with pytest.raises(ValueError, match="unusable proxy"):
        proxies_from(monkeypatch, HTTPS_PROXY="socks5://p:1080")
