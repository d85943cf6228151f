"""A real forward HTTP proxy on loopback, as a company network puts in front of the internet.

Plain http requests arrive in absolute form (`POST http://host:port/path HTTP/1.1`) and are
piped to that host (origin servers accept the absolute form, RFC 9112 §3.2.2); https goes
through `CONNECT host:port`, answered 200 and then piped both ways. Every request line and
CONNECT target that reaches it is recorded, with the Proxy-Authorization it carried.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass, field
from urllib.parse import urlsplit


@dataclass
class ForwardProxy:
    """The proxy's state; `url` once started."""

    seen: list[str] = field(default_factory=list)
    authorizations: list[str | None] = field(default_factory=list)
    hang_on_connect: bool = False  # accept CONNECT and never answer it
    refuse_connect: bool = False  # answer CONNECT with 403
    url: str = ""
    _server: asyncio.Server | None = None
    _tasks: set[asyncio.Task[None]] = field(default_factory=set)

    async def start(self) -> ForwardProxy:
        """Listen on a free loopback port."""
        self._server = await asyncio.start_server(self._client, "127.0.0.1", 0)
        port = self._server.sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"
        return self

    async def stop(self) -> None:
        """Stop listening and drop every piped connection."""
        if self._server is not None:
            self._server.close()
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            await self._serve(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError, OSError):
            pass
        finally:
            self._tasks.discard(task)
            writer.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        method, target, _version = lines[0].split(" ", 2)
        auth = next(
            (
                line.split(":", 1)[1].strip()
                for line in lines[1:]
                if line.lower().startswith("proxy-authorization:")
            ),
            None,
        )
        self.seen.append(f"{method} {target}")
        self.authorizations.append(auth)
        if method == "CONNECT":
            if self.hang_on_connect:
                await asyncio.sleep(3600)
            if self.refuse_connect:
                writer.write(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n")
                await writer.drain()
                return
            host, port = target.rsplit(":", 1)
            up_reader, up_writer = await asyncio.open_connection(host, int(port))
            writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
            await writer.drain()
            await _pipe_both(reader, writer, up_reader, up_writer, b"")
            return
        parts = urlsplit(target)
        assert parts.hostname is not None
        up_reader, up_writer = await asyncio.open_connection(parts.hostname, parts.port or 80)
        await _pipe_both(reader, writer, up_reader, up_writer, head)


async def _pipe_both(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    up_reader: asyncio.StreamReader,
    up_writer: asyncio.StreamWriter,
    first: bytes,
) -> None:
    async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
        try:
            while data := await src.read(65536):
                dst.write(data)
                await dst.drain()
        finally:
            with contextlib.suppress(Exception):
                dst.close()

    if first:
        up_writer.write(first)
    await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))
