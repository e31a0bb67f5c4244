"""A hostile Workers API for tests: real HTTP on 127.0.0.1 (a raw ASGI app on uvicorn
in a background thread), answering what a broken or malicious upstream might.

What each route does is set per test in ``server.modes`` (``create``, ``stream``) and
by the file's name (``files``):

- create ``drip``: a Worker JSON sent one byte every ``drip_seconds``; ``cookie``: the
  answer sets a cookie (every request's ``Cookie`` header is kept in ``cookies_sent``).
- stream ``nonjson``: every event's data is not JSON; ``oversize``: one event of
  ``oversize_bytes`` between two small ones.
- file ``endless``: a body that never ends; ``huge``: ``Content-Length`` of 2 GiB;
  ``drip``: one byte every ``drip_seconds``; anything else: ``b"file:" + name``.
"""

from __future__ import annotations

import asyncio
import json
from types import TracebackType
from typing import Any, Self
from urllib.parse import unquote

import uvicorn
from starlette.types import Receive, Scope, Send

from orchestrator.emulator.server import BackgroundServer, loopback_socket

WORKER = {"id": "wrk_hostile", "status": "running", "running": True}


class HostileServer:
    def __init__(self) -> None:
        self.modes: dict[str, str] = {}
        self.drip_seconds = 0.1
        # Built once, up front: a test may measure the client's memory meanwhile.
        self.oversize_bytes = 5 * 2**20
        self._oversize = b'data: "' + b"y" * self.oversize_bytes + b'"\n\n'
        self.bytes_sent: dict[str, int] = {}  # per file name
        self.stream_connections = 0
        self.cookies_sent: list[bytes | None] = []  # each request's Cookie header
        self.url = ""
        self._running: BackgroundServer | None = None

    # --- the app -----------------------------------------------------------------

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        self.cookies_sent.append(dict(scope["headers"]).get(b"cookie"))
        gone = asyncio.Event()  # uvicorn drops sends after a disconnect without a word

        async def watch() -> None:
            while (await receive())["type"] != "http.disconnect":
                pass
            gone.set()

        watcher = asyncio.create_task(watch())
        try:
            await self._route(scope, send, gone)
        finally:
            watcher.cancel()

    async def _route(self, scope: Scope, send: Send, gone: asyncio.Event) -> None:
        path: str = scope["path"]
        if path == "/api/workers" and scope["method"] == "POST":
            await self._create(send, gone)
        elif path.startswith("/api/workers/wrk_hostile/files/"):
            name = unquote(path.removeprefix("/api/workers/wrk_hostile/files/"))
            await self._file(name, send, gone)
        elif path == "/api/workers/wrk_hostile/stream":
            await self._stream(send)
        else:
            await _answer(send, 404, b'{"message": "no such thing"}')

    async def _create(self, send: Send, gone: asyncio.Event) -> None:
        body = json.dumps(WORKER).encode() + b" " * 200
        if self.modes.get("create") == "cookie":
            cookie = (b"set-cookie", b"sticky=node-7; Path=/; HttpOnly")
            await _answer(send, 200, body, [(b"content-type", b"application/json"), cookie])
            return
        if self.modes.get("create") != "drip":
            await _answer(send, 200, body)
            return
        await self._drip(send, gone, body)

    async def _drip(self, send: Send, gone: asyncio.Event, body: bytes) -> None:
        """A JSON ``body`` one byte every ``drip_seconds``, until the client goes."""
        await _start(send, 200, [(b"content-type", b"application/json")])
        for i in range(len(body)):
            if gone.is_set():
                return
            await _more(send, body[i : i + 1])
            await asyncio.sleep(self.drip_seconds)
        await send({"type": "http.response.body", "body": b""})

    async def _file(self, name: str, send: Send, gone: asyncio.Event) -> None:
        kind = name.rsplit("/", 1)[-1]
        headers = [(b"content-type", b"application/octet-stream")]
        self.bytes_sent[name] = 0
        if kind == "huge":
            await _start(send, 200, [*headers, (b"content-length", str(2**31).encode())])
            await _more(send, b"x" * 1024)
            return  # the connection drops short of the promised length
        if kind in ("endless", "drip"):
            await _start(send, 200, headers)
            chunk = b"x" * (64 * 1024) if kind == "endless" else b"x"
            while not gone.is_set():  # until the client goes away
                await _more(send, chunk)
                self.bytes_sent[name] += len(chunk)
                await asyncio.sleep(0 if kind == "endless" else self.drip_seconds)
            return
        await _answer(send, 200, b"file:" + name.encode(), headers)

    async def _stream(self, send: Send) -> None:
        self.stream_connections += 1
        mode = self.modes.get("stream", "")
        await _start(send, 200, [(b"content-type", b"text/event-stream")])
        if mode == "nonjson":
            events = [b"id: 0\ndata: {not json\n\n"]
        elif mode == "oversize":
            events = [b'data: {"n": 0}\n\n', self._oversize, b'data: {"n": 2}\n\n']
        else:
            events = [b'data: {"n": 0}\n\n']
        for event in events:
            for i in range(0, len(event), 256 * 1024):  # a big event comes in pieces
                await _more(send, event[i : i + 256 * 1024])
        await send({"type": "http.response.body", "body": b""})

    # --- running -------------------------------------------------------------------

    def __enter__(self) -> Self:
        sock = loopback_socket()
        self.url = f"http://127.0.0.1:{sock.getsockname()[1]}"
        config = uvicorn.Config(self, log_level="critical", access_log=False, lifespan="off")
        self._running = BackgroundServer(config, sock, "hostile")
        if not self._running.start(timeout=10):
            raise RuntimeError("the hostile server did not start")
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        assert self._running is not None
        self._running.stop(force=True)


async def _start(send: Send, status: int, headers: list[tuple[bytes, bytes]]) -> None:
    await send({"type": "http.response.start", "status": status, "headers": headers})


async def _more(send: Send, body: bytes) -> None:
    await send({"type": "http.response.body", "body": body, "more_body": True})


async def _answer(
    send: Send, status: int, body: bytes, headers: list[tuple[bytes, bytes]] | None = None
) -> None:
    await _start(send, status, headers or [(b"content-type", b"application/json")])
    await send({"type": "http.response.body", "body": body})


__all__: list[Any] = ["HostileServer"]
