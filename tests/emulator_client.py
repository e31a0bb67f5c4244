"""The emulator's tests' parts: one server per module, a client that leaves it reset with
no faults, and helpers that create a worker, read a stream, finish a turn."""

from __future__ import annotations

import json
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import httpx
import pytest

from orchestrator.emulator import EmulatorConfig, EmulatorServer, FaultConfig

KEY = "test-key-1234"
TURN = 0.2
EVENTS = 6
NO_FAULTS = FaultConfig().model_dump()
COSTS = ("internalCostUsd", "modelCostUsd", "sandboxCostUsd", "toolCostUsd")


@pytest.fixture(scope="module")
def emu() -> Iterator[EmulatorServer]:
    with EmulatorServer(KEY, EmulatorConfig(turn_seconds=TURN, events_per_turn=EVENTS)) as server:
        yield server


@pytest.fixture
def client(emu: EmulatorServer) -> Iterator[httpx.Client]:
    headers = {"Authorization": f"Bearer {KEY}"}
    with httpx.Client(base_url=emu.url, headers=headers, timeout=10) as c:
        yield c
        c.post("/_emulator/faults", json=NO_FAULTS).raise_for_status()
        c.post("/_emulator/config", json={"turn_seconds": TURN, "events_per_turn": EVENTS})
        c.post("/_emulator/reset").raise_for_status()


def read_stream(
    client: httpx.Client, path: str, *, method: str = "GET", **kwargs: Any
) -> list[dict[str, Any]]:
    """Every event's JSON from an SSE response, until the server closes it."""
    events: list[dict[str, Any]] = []
    with client.stream(method, path, **kwargs) as response:
        assert response.status_code == 200, response.read()
        assert response.headers["content-type"].startswith("text/event-stream")
        data: list[str] = []
        for line in response.iter_lines():
            if line.startswith("data:"):
                data.append(line[5:].strip())
            elif line == "" and data:
                events.append(json.loads("\n".join(data)))
                data = []
    return events


def create(client: httpx.Client, text: str = "summarise the report", **extra: Any) -> str:
    response = client.post("/api/workers", json={"input": text, **extra})
    assert response.status_code == 200, response.text
    worker_id: str = response.json()["id"]
    return worker_id


def finish(client: httpx.Client, worker_id: str) -> dict[str, Any]:
    """Follow the worker's stream to its end, then return the Worker (money as Decimal)."""
    read_stream(client, f"/api/workers/{worker_id}/stream")
    response = client.get(f"/api/workers/{worker_id}")
    worker: dict[str, Any] = json.loads(response.text, parse_float=Decimal)
    return worker


def ledger(client: httpx.Client) -> dict[str, Any]:
    data: dict[str, Any] = client.get("/_emulator/ledger").json()
    return data
