"""The emulator over real HTTP on 127.0.0.1: idempotency keys, injected faults (status,
lost response, slow, cut stream, seeded), the control routes, and the server's own start
and stop.

One server serves the module; every test starts from a reset state with no faults.
"""

from __future__ import annotations

import json
import time
from typing import Any

import httpx
import pytest
import uvicorn

from orchestrator.emulator import EmulatorConfig, EmulatorServer
from orchestrator.emulator.server import BackgroundServer, loopback_socket

from .emulator_client import (
    EVENTS,
    NO_FAULTS,
    create,
    finish,
    ledger,
    read_stream,
)
from .emulator_client import client as client  # the fixtures: a server, a reset client
from .emulator_client import emu as emu

# --- idempotency and faults -------------------------------------------------------


def test_idempotency_key_returns_the_first_answer(client: httpx.Client) -> None:
    key = {"Idempotency-Key": "job-42"}
    first = client.post("/api/workers", json={"input": "once"}, headers=key)
    second = client.post("/api/workers", json={"input": "once"}, headers=key)
    assert (first.status_code, second.status_code) == (200, 200)
    assert second.json() == first.json()
    other = client.post("/api/workers", json={"input": "once"}, headers={"Idempotency-Key": "b"})
    assert other.json()["id"] != first.json()["id"]
    stream_key = {"Idempotency-Key": "streamed"}
    body = {"input": "s", "stream": True}
    once = read_stream(client, "/api/workers", method="POST", json=body, headers=stream_key)
    twice = read_stream(client, "/api/workers", method="POST", json=body, headers=stream_key)
    assert once == twice and len(once) == EVENTS
    worker_id = first.json()["id"]
    finish(client, worker_id)
    turn_key = {"Idempotency-Key": "turn-2"}
    answers = [
        client.post(f"/api/workers/{worker_id}", json={"input": "x"}, headers=turn_key)
        for _ in range(2)
    ]
    assert [a.status_code for a in answers] == [200, 200]
    assert answers[0].json() == answers[1].json()
    book = ledger(client)
    assert (book["workers_created"], book["turns_started"]) == (3, 4)


def test_status_faults_and_retry_headers(client: httpx.Client) -> None:
    client.post("/_emulator/faults", json={"rate_429": 1.0, "retry_after_ms": 250})
    limited = client.get("/api/workers/wrk_x")
    assert limited.status_code == 429
    assert limited.headers["retry-after"] == "1"
    assert limited.headers["retry-after-ms"] == "250"
    # Faults never touch the control routes.
    assert client.get("/_emulator/ledger").status_code == 200
    for status, field in ((500, "rate_500"), (503, "rate_503")):
        client.post("/_emulator/faults", json={"rate_429": 0.0, field: 1.0})
        assert client.post("/api/workers", json={"input": "x"}).status_code == status
        client.post("/_emulator/faults", json={field: 0.0})
    book = ledger(client)
    assert book["workers_created"] == 0
    assert book["requests_by_route"]["create"] == {"500": 1, "503": 1}


def test_lost_response_still_acts_and_key_recovers_it(client: httpx.Client) -> None:
    client.post("/_emulator/faults", json={"rate_lost_response": 1.0})
    key = {"Idempotency-Key": "lost-1"}
    lost = client.post("/api/workers", json={"input": "x"}, headers=key)
    assert lost.status_code == 502
    assert ledger(client)["workers_created"] == 1  # the action happened anyway
    client.post("/_emulator/faults", json={"rate_lost_response": 0.0})
    retried = client.post("/api/workers", json={"input": "x"}, headers=key)
    assert retried.status_code == 200
    assert retried.json()["id"].startswith("wrk_")
    assert ledger(client)["workers_created"] == 1


def test_slow_fault_delays_the_answer(client: httpx.Client) -> None:
    client.post("/_emulator/faults", json={"rate_slow": 1.0, "slow_seconds": 0.3})
    started = time.monotonic()
    assert client.get("/api/workers/wrk_x").status_code == 404
    assert time.monotonic() - started >= 0.3


def test_cut_stream_ends_before_the_finish(client: httpx.Client) -> None:
    worker_id = create(client)
    complete = read_stream(client, f"/api/workers/{worker_id}/stream")
    client.post("/_emulator/faults", json={"rate_cut_stream": 1.0, "seed": 7})
    for _ in range(3):
        received: list[str] = []
        with (
            pytest.raises(httpx.RemoteProtocolError),
            client.stream("GET", f"/api/workers/{worker_id}/stream") as response,
        ):
            received.extend(line for line in response.iter_lines() if line.startswith("data:"))
        assert len(received) < len(complete)
        assert [json.loads(d[5:]) for d in received] == complete[: len(received)]


def test_seeded_faults_are_reproducible(client: httpx.Client) -> None:
    def statuses() -> list[int]:
        client.post("/_emulator/reset")  # restarts the seeded sequence
        return [client.get("/api/workers/wrk_x").status_code for _ in range(20)]

    client.post("/_emulator/faults", json={"rate_500": 0.5, "seed": 1234})
    first = statuses()
    assert first == statuses()
    assert {404, 500} == set(first)


# --- control routes and the server itself -----------------------------------------


def test_control_routes(client: httpx.Client) -> None:
    assert client.get("/_emulator/faults").json() == NO_FAULTS
    bad = client.post("/_emulator/faults", json={"rate_429": 2})
    assert bad.status_code == 422 and bad.json()["error"]["field"] == "rate_429"
    bad = client.post("/_emulator/config", json={"turn_seconds": -1})
    assert bad.status_code == 422 and bad.json()["error"]["field"] == "turn_seconds"

    config = client.post("/_emulator/config", json={"events_per_turn": 4}).json()
    assert config["events_per_turn"] == 4
    worker_id = create(client)
    assert len(read_stream(client, f"/api/workers/{worker_id}/stream")) == 4

    assert client.post("/_emulator/reset").json() == {"reset": True}
    assert client.get(f"/api/workers/{worker_id}").status_code == 404
    book = ledger(client)
    assert book["workers_created"] == 0 and book["usage_cost_micro"] == 0
    assert book["requests_by_route"] == {"retrieve": {"404": 1}}


def test_reset_ends_open_streams(client: httpx.Client) -> None:
    client.post("/_emulator/config", json={"turn_seconds": 30})
    worker_id = create(client)
    started = time.monotonic()
    with client.stream("GET", f"/api/workers/{worker_id}/stream") as response:
        lines = response.iter_lines()
        assert next(lines) == "id: 0"
        client.post("/_emulator/reset")
        rest = [line for line in lines if line.startswith("data:")]
    assert len(rest) == 1 and rest[0].startswith('data: {"type":"start","turn":1')
    assert time.monotonic() - started < 5
    assert ledger(client)["concurrent_turns"] == 0


def test_server_binds_a_free_port_and_stops_with_open_streams() -> None:
    with EmulatorServer("k2", EmulatorConfig(turn_seconds=30)) as server:
        assert server.url == f"http://127.0.0.1:{server.port}" and server.port > 0
        assert server.api_key == "k2"
        headers = {"Authorization": "Bearer k2"}
        worker = httpx.post(f"{server.url}/api/workers", json={"input": "x"}, headers=headers)
        client = httpx.Client(base_url=server.url, headers=headers, timeout=10)
        stream = client.stream("GET", f"/api/workers/{worker.json()['id']}/stream")
        response = stream.__enter__()
        assert next(response.iter_lines()).startswith("id: 0")
        started = time.monotonic()
    assert time.monotonic() - started < 5  # the 30 s turn did not hold the shutdown
    stream.__exit__(None, None, None)
    client.close()
    with pytest.raises(httpx.ConnectError):
        httpx.get(server.url + "/api/workers/x", headers=headers)


def test_server_refuses_a_second_start() -> None:
    with EmulatorServer("k3") as server:
        with pytest.raises(RuntimeError, match="already started"):
            server.start()
        assert httpx.get(server.url + "/api/workers/x").status_code == 401  # still serving


# uvicorn ends a server whose startup failed with sys.exit, here in its thread.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
def test_background_server_reports_a_server_that_ends_before_serving() -> None:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        assert scope["type"] == "lifespan"
        await receive()
        await send({"type": "lifespan.startup.failed", "message": "refused on purpose"})

    sock = loopback_socket()
    config = uvicorn.Config(app, lifespan="on", log_level="critical")
    running = BackgroundServer(config, sock, "failing")
    began = time.monotonic()
    try:
        assert running.start(timeout=30) is False
    finally:
        sock.close()
    assert time.monotonic() - began < 10  # the thread's end was seen, not the timeout
    assert not running.thread.is_alive()
