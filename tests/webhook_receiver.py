"""A real webhook receiver for tests: an HTTP server on 127.0.0.1 that answers each POST
with the next scripted status (then 200), keeps every request, and verifies signatures
with the ``standardwebhooks`` package."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from standardwebhooks import Webhook


@dataclass
class Received:
    headers: dict[str, str]
    body: bytes
    answered: int

    @property
    def event(self) -> dict[str, Any]:
        return dict(json.loads(self.body))


@dataclass
class Receiver:
    server: ThreadingHTTPServer
    script: list[int] = field(default_factory=list)
    got: list[Received] = field(default_factory=list)
    changed: threading.Condition = field(default_factory=threading.Condition)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/hook"

    def wait_for(self, count: int, timeout: float = 60.0) -> list[Received]:
        """Block until ``count`` requests came (bounded)."""
        deadline = time.monotonic() + timeout
        with self.changed:
            while len(self.got) < count:
                left = deadline - time.monotonic()
                assert left > 0, f"{len(self.got)} of {count} requests within {timeout}s"
                self.changed.wait(left)
            return list(self.got)

    def verified(self, secret: str) -> list[dict[str, Any]]:
        """Each request's payload, its signature verified (raises if one is wrong)."""
        hook = Webhook(secret)
        return [dict(hook.verify(r.body, r.headers)) for r in self.got]

    def deduped(self, secret: str) -> dict[str, dict[str, Any]]:
        """What a receiver keeps: one payload per ``webhook-id``, from the 2xx answers."""
        self.verified(secret)
        return {r.headers["webhook-id"]: r.event for r in self.got if r.answered < 300}

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def start_receiver() -> Receiver:
    holder: dict[str, Receiver] = {}

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            rx = holder["rx"]
            body = self.rfile.read(int(self.headers.get("content-length", "0")))
            with rx.changed:
                status = rx.script.pop(0) if rx.script else 200
                headers = {k.lower(): v for k, v in self.headers.items()}
                rx.got.append(Received(headers, body, status))
                rx.changed.notify_all()
            self.send_response(status)
            self.send_header("content-length", "2")
            self.end_headers()
            self.wfile.write(b"ok")

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    holder["rx"] = Receiver(server)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return holder["rx"]


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    """A receiver of the test's own, closed after it."""
    rx = start_receiver()
    try:
        yield rx
    finally:
        rx.close()
