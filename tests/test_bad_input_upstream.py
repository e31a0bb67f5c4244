"""Bad input corpus, over HTTP: the emulator answers 422 naming the field, and a
malformed upstream (a tiny local HTTP server answering garbage, JSON and SSE) makes the
client raise typed errors.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from orchestrator.errors import APIError
from orchestrator.wire.client import WorkersClient
from orchestrator.wire.retry import RetryPolicy

from .conftest import Emulator

# --- the emulator over HTTP ------------------------------------------------------------

# fmt: off
EMULATOR = [
    ('{"input": 5}', "input"), ('{"input": ""}', "input"), ("{}", "input"),
    ('{"input": "x", "budget": "huge"}', "budget"), ('{"input": "x", "extra": 1}', "extra"),
    ("not json", "body"), ("[1, 2]", "body"), ('{"input": "x", "stream": "yes"}', "stream"),
    ('{"input": ["a"]}', "input"),
]
# fmt: on
SCHEDULE_BODIES = [
    ({"input": "x", "when": {"type": "cron", "cron": "bad"}}, "when.cron"),
    ({"input": "x", "when": {"type": "interval", "intervalSeconds": -1}}, "when.interval_seconds"),
    ({"input": "x", "when": {"type": "interval", "intervalSeconds": True}},  # true is not 1 s
     "when.interval_seconds"),
    ({"input": "x", "when": {"type": "scheduled", "date": "2001-01-01T00:00:00Z"}}, "when.date"),
    ({"input": "x", "when": {"type": "x"}}, "when"),
    ({"input": "x"}, "when"),
]


@pytest.mark.parametrize(("body", "field"), EMULATOR, ids=[b[:30] for b, _ in EMULATOR])
def test_emulator_answers_422_naming_the_field(emulator: Emulator, body: str, field: str) -> None:
    answer = emulator.http.post(
        "/api/workers", content=body, headers={"content-type": "application/json"}
    )
    assert answer.status_code == 422, answer.text[:200]
    assert answer.json()["error"]["field"] == field


@pytest.mark.parametrize(("body", "field"), SCHEDULE_BODIES, ids=lambda v: str(v)[:40])
def test_emulator_schedule_answers_422(
    emulator: Emulator, body: dict[str, Any], field: str
) -> None:
    worker = emulator.http.post("/api/workers", json={"input": "x"}).json()["id"]
    answer = emulator.http.post(f"/api/workers/{worker}/schedules", json=body)
    assert answer.status_code == 422 and answer.json()["error"]["field"] == field, answer.text


# --- a malformed upstream ----------------------------------------------------------------


class Garbage:
    """A tiny HTTP server answering whatever ``answers[path]`` says: (status, type, body)."""

    def __init__(self) -> None:
        answers: dict[str, tuple[int, str, bytes]] = {}

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                status, kind, body = answers[self.path.split("?")[0]]
                self.send_response(status)
                self.send_header("content-type", kind)
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.answers = answers
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.client = WorkersClient(
            f"http://127.0.0.1:{self.server.server_address[1]}",
            "sk-garbage",
            retry=RetryPolicy(max_retries=0),
        )


@pytest.fixture(scope="module")
def garbage() -> Iterator[Garbage]:
    g = Garbage()
    yield g
    g.client.close()
    g.server.shutdown()


NAN = b'{"id": "w", "costs": {"internal_cost_usd": NaN, "model_cost_usd": 0, "tool_cost_usd": 0}}'
# fmt: off
JSON_GARBAGE = [
    (200, "application/json", b"<html>oops</html>"), (200, "application/json", b'{"id": 5}'),
    (200, "application/json", b"[1, 2, 3]"), (200, "application/json", b""),
    (200, "application/json", b"[" * 100_000), (200, "application/json", b'{"id": "\xff\xfe"}'),
    (200, "application/json", NAN), (500, "application/json", b"[" * 100_000),
    (500, "application/octet-stream", bytes(range(256))), (429, "text/html", b"<h1>slow</h1>"),
]
# fmt: on


@pytest.mark.parametrize("answer", JSON_GARBAGE, ids=lambda a: f"{a[0]}:{a[2][:16]!r}")
def test_client_raises_a_typed_error_for_a_malformed_answer(
    garbage: Garbage, answer: tuple[int, str, bytes]
) -> None:
    garbage.answers["/api/workers/w1"] = answer
    with pytest.raises(APIError) as caught:
        garbage.client.retrieve("w1")
    assert len(str(caught.value)) < 1000 and "sk-garbage" not in str(caught.value)


SSE_GARBAGE = [
    b'data: {"a": 1}\n\nthis is not sse\n\ndata: not json\n\n',
    b"data: \xff\xfe\n\n",
    b"data: " + b"[" * 100_000 + b"\n\n",
]
# An event over EVENT_MAX_BYTES is no error: it becomes a marked, truncated record
# (tests/test_client.py, tests/test_bounds.py).


@pytest.mark.parametrize("body", SSE_GARBAGE, ids=lambda b: repr(b[:20]))
def test_client_raises_a_typed_error_for_a_garbage_stream(garbage: Garbage, body: bytes) -> None:
    garbage.answers["/api/workers/w1/stream"] = (200, "text/event-stream", body)
    with pytest.raises(APIError):
        list(garbage.client.stream_updates("w1"))
    garbage.answers["/api/workers/w1/stream"] = (200, "application/json", b"{}")
    with pytest.raises(APIError, match="expected an event stream"):
        list(garbage.client.stream_updates("w1"))
