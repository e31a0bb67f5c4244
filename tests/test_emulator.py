"""The emulator over real HTTP on 127.0.0.1: auth, wire format, streams, money, files,
email and schedules (idempotency, faults and the server itself:
tests/test_emulator_faults.py).

One server serves the module; every test starts from a reset state with no faults.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from croniter import croniter

from orchestrator.emulator import EmulatorServer
from orchestrator.money import to_micro

from .emulator_client import (
    COSTS,
    EVENTS,
    KEY,
    TURN,
    create,
    finish,
    ledger,
    read_stream,
)
from .emulator_client import client as client  # the fixtures: a server, a reset client
from .emulator_client import emu as emu

# --- auth, not found, invalid -----------------------------------------------------


def test_every_route_needs_the_bearer_key(emu: EmulatorServer, client: httpx.Client) -> None:
    paths = ["/api/workers/wrk_x", "/api/workers/wrk_x/stream", "/_emulator/ledger"]
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": KEY}):
        for path in paths:
            response = httpx.get(emu.url + path, headers=headers)
            assert response.status_code == 401
            assert response.json()["error"]["type"] == "authentication_error"
            assert KEY not in response.text
        response = httpx.post(f"{emu.url}/api/workers", json={"input": "x"}, headers=headers)
        assert response.status_code == 401


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/api/workers/wrk_missing"),
        ("POST", "/api/workers/wrk_missing"),
        ("GET", "/api/workers/wrk_missing/stream"),
        ("GET", "/api/workers/wrk_missing/email"),
        ("GET", "/api/workers/wrk_missing/files/report.md"),
        ("GET", "/api/workers/wrk_missing/schedules"),
        ("DELETE", "/api/workers/wrk_missing/schedules/sch_x"),
        ("GET", "/api/no-such-route"),
    ],
)
def test_unknown_things_are_404(client: httpx.Client, method: str, path: str) -> None:
    response = client.request(method, path, json={"input": "x"} if method == "POST" else None)
    assert response.status_code == 404
    assert response.json()["error"]["type"] == "not_found_error"


@pytest.mark.parametrize(
    ("body", "field"),
    [
        (b"not json", "body"),
        (b"[1, 2]", "body"),
        (b"{}", "input"),
        (b'{"input": ""}', "input"),
        (b'{"input": 42}', "input"),
        (b'{"input": "x", "budget": "huge"}', "budget"),
        (b'{"input": "x", "stream": "maybe"}', "stream"),
        (b'{"input": "x", "colour": "red"}', "colour"),
    ],
)
def test_invalid_worker_bodies_are_422_naming_the_field(
    client: httpx.Client, body: bytes, field: str
) -> None:
    response = client.post("/api/workers", content=body)
    assert response.status_code == 422
    error = response.json()["error"]
    assert error["field"] == field
    assert error["type"] == "invalid_request_error"
    assert ledger(client)["workers_created"] == 0


@pytest.mark.parametrize(
    ("when", "field"),
    [
        ({"type": "cron", "cron": "61 * * * *"}, "when.cron"),
        ({"type": "cron", "cron": "* * *"}, "when.cron"),
        ({"type": "delayed", "delayInSeconds": 0}, "when.delay_in_seconds"),
        ({"type": "interval", "intervalSeconds": -5}, "when.interval_seconds"),
        ({"type": "interval", "intervalSeconds": "often"}, "when.interval_seconds"),
        ({"type": "scheduled", "date": "2001-01-01T00:00:00Z"}, "when.date"),
        ({"type": "scheduled", "date": "tomorrow"}, "when.date"),
        ({"type": "weekly"}, "when"),
    ],
)
def test_invalid_schedules_are_422_naming_the_field(
    client: httpx.Client, when: dict[str, Any], field: str
) -> None:
    worker_id = create(client)
    response = client.post(f"/api/workers/{worker_id}/schedules", json={"input": "x", "when": when})
    assert response.status_code == 422
    assert response.json()["error"]["field"] == field
    assert client.get(f"/api/workers/{worker_id}/schedules").json()["schedules"] == []


# --- turns and streams ------------------------------------------------------------


def test_create_streams_a_turn_then_completes(client: httpx.Client) -> None:
    response = client.post("/api/workers", json={"input": "hello"})
    worker = response.json()
    assert worker["id"].startswith("wrk_")
    assert (worker["status"], worker["running"], worker["object"]) == ("running", True, "worker")
    assert worker["costs"] is None  # unknown until the first turn completes

    started = time.monotonic()
    events = read_stream(client, f"/api/workers/{worker['id']}/stream")
    assert time.monotonic() - started >= TURN * 0.5  # live events are paced, not dumped
    assert len(events) == EVENTS
    assert {k: v for k, v in events[0].items() if k != "at"} == {"type": "start", "turn": 1}
    assert {k: v for k, v in events[-1].items() if k != "at"} == {"type": "finish"}
    deltas = [e["delta"] for e in events if e["type"] == "text-delta"]

    done = client.get(f"/api/workers/{worker['id']}").json()
    expected_keys = {
        "id", "created_at", "error", "files", "incomplete_details", "messages", "metadata",
        "object", "output", "output_text", "running", "sources", "status", "costs", "usage",
    }  # fmt: skip
    assert set(done) == expected_keys
    assert (done["status"], done["running"]) == ("completed", False)
    assert done["output_text"] == "".join(deltas)
    assert done["output"][0]["content"][0] == {"text": done["output_text"], "type": "output_text"}
    assert done["sources"][0]["type"] == "url"
    assert set(done["costs"]) == set(COSTS)
    assert {"inputTokens", "totalTokens", "costUsd", "steps", "credits"} <= set(done["usage"])
    assert ledger(client)["events_emitted"] == EVENTS


def test_create_with_stream_true_answers_with_the_stream(client: httpx.Client) -> None:
    events = read_stream(
        client, "/api/workers", method="POST", json={"input": "go", "stream": True}
    )
    assert [events[0]["type"], events[-1]["type"]] == ["start", "finish"]
    assert len(events) == EVENTS
    book = ledger(client)
    assert book["workers_created"] == 1
    replay = read_stream(client, f"/api/workers/{book['last_worker_id']}/stream")
    assert replay == events


def test_reconnect_replays_every_update_in_order(client: httpx.Client) -> None:
    worker_id = create(client)
    live = read_stream(client, f"/api/workers/{worker_id}/stream")
    again = read_stream(client, f"/api/workers/{worker_id}/stream")
    via_retrieve = read_stream(client, f"/api/workers/{worker_id}", params={"stream": "true"})
    assert live == again == via_retrieve
    assert len(live) == EVENTS
    # Replays are not new updates.
    assert ledger(client)["events_emitted"] == EVENTS


def test_continue_adds_a_turn_and_costs_are_cumulative(client: httpx.Client) -> None:
    worker_id = create(client)
    busy = client.post(f"/api/workers/{worker_id}", json={"input": "more"})
    assert busy.status_code == 409
    first = finish(client, worker_id)

    again = client.post(f"/api/workers/{worker_id}", json={"input": "more"})
    assert again.status_code == 200
    assert again.json()["running"] is True
    second = finish(client, worker_id)
    events = read_stream(client, f"/api/workers/{worker_id}/stream")
    assert len(events) == 2 * EVENTS
    assert {k: v for k, v in events[EVENTS].items() if k != "at"} == {"type": "start", "turn": 2}
    assert len(second["output"]) == 2

    for name in COSTS:
        assert second["costs"][name] >= first["costs"][name]
        assert -second["costs"][name].as_tuple().exponent <= 6
    usage = second["usage"]
    assert usage["costUsd"] == sum(second["costs"][n] for n in COSTS)
    assert usage["inputTokens"] > first["usage"]["inputTokens"]
    assert usage["steps"] > first["usage"]["steps"]

    book = ledger(client)
    assert (book["turns_started"], book["turns_completed"]) == (2, 2)
    assert book["usage_cost_micro"] == to_micro(usage["costUsd"])
    assert book["internal_cost_micro"] == to_micro(second["costs"]["internalCostUsd"])
    assert book["model_cost_micro"] == to_micro(second["costs"]["modelCostUsd"])
    assert book["sandbox_cost_micro"] == to_micro(second["costs"]["sandboxCostUsd"])
    assert book["tool_cost_micro"] == to_micro(second["costs"]["toolCostUsd"])
    assert book["total_tokens"] == usage["totalTokens"]
    assert book["credits"] == usage["credits"]

    # stream: true on continue answers with the stream: the whole history, then turn 3.
    streamed = read_stream(
        client, f"/api/workers/{worker_id}", method="POST", json={"input": "go", "stream": True}
    )
    assert len(streamed) == 3 * EVENTS  # the whole history, then turn 3 live
    third = streamed[2 * EVENTS]
    assert {k: v for k, v in third.items() if k != "at"} == {"type": "start", "turn": 3}


def test_ledger_sums_turn_deltas_over_many_workers(client: httpx.Client) -> None:
    ids = [create(client, f"job {i}") for i in range(4)]
    workers = [finish(client, worker_id) for worker_id in ids]
    book = ledger(client)
    assert book["workers_created"] == 4
    assert book["max_concurrent_turns"] >= 2
    assert book["concurrent_turns"] == 0
    assert book["usage_cost_micro"] == sum(to_micro(w["usage"]["costUsd"]) for w in workers)
    assert book["input_tokens"] == sum(w["usage"]["inputTokens"] for w in workers)


def test_instant_turns(client: httpx.Client) -> None:
    client.post("/_emulator/config", json={"turn_seconds": 0, "events_per_turn": 3})
    worker = finish(client, create(client))
    assert worker["status"] == "completed"
    assert len(read_stream(client, f"/api/workers/{worker['id']}/stream")) == 3


# --- files, email, schedules ------------------------------------------------------


def test_nested_binary_file_round_trips(client: httpx.Client) -> None:
    worker = finish(client, create(client))
    by_name = {f["filename"]: f for f in worker["files"]}
    plot = by_name["data/charts/plot.bin"]
    assert plot["url"].startswith(client.base_url.join("/api/workers/").__str__())
    body = httpx.get(plot["url"], headers=client.headers).content
    assert set(body) == set(range(256))
    assert client.get(f"/api/workers/{worker['id']}/files/data/charts/plot.bin").content == body
    report = httpx.get(by_name["report.md"]["url"], headers=client.headers)
    assert worker["output_text"] in report.text
    missing = client.get(f"/api/workers/{worker['id']}/files/data/nope.bin")
    assert missing.status_code == 404
    escape = client.get(f"/api/workers/{worker['id']}/files/data/%2e%2e/%2e%2e/report.md")
    assert escape.status_code == 404


def test_email_is_a_json_string(client: httpx.Client) -> None:
    worker_id = create(client)
    response = client.get(f"/api/workers/{worker_id}/email")
    assert response.status_code == 200
    assert response.json() == f"{worker_id}@workers.example.test"


def test_schedules_crud_with_next_run(client: httpx.Client) -> None:
    worker_id = create(client)
    path = f"/api/workers/{worker_id}/schedules"
    date = (datetime.now(UTC) + timedelta(days=2)).replace(microsecond=0)
    before = datetime.now(UTC)
    made = {
        kind: client.post(path, json={"input": f"run {kind}", "when": when, **extra})
        for kind, when, extra in [
            ("scheduled", {"type": "scheduled", "date": date.isoformat()}, {"budget": "high"}),
            ("delayed", {"type": "delayed", "delayInSeconds": 90}, {}),
            ("cron", {"type": "cron", "cron": "*/15 * * * *"}, {}),
            ("interval", {"type": "interval", "intervalSeconds": 600}, {}),
        ]
    }
    after = datetime.now(UTC)
    assert all(r.status_code == 200 for r in made.values())
    body = {kind: r.json() for kind, r in made.items()}

    def next_run(kind: str) -> datetime:
        return datetime.fromisoformat(body[kind]["nextRunAt"].replace("Z", "+00:00"))

    assert all(b["nextRunAt"].endswith("Z") and b["id"].startswith("sch_") for b in body.values())
    assert next_run("scheduled") == date and body["scheduled"]["budget"] == "high"
    assert "date" not in body["scheduled"]
    assert body["delayed"]["delayInSeconds"] == 90 and body["delayed"]["budget"] == "standard"
    assert before + timedelta(seconds=89) <= next_run("delayed") <= after + timedelta(seconds=91)
    assert body["cron"]["cron"] == "*/15 * * * *"
    assert next_run("cron") == croniter("*/15 * * * *", before).get_next(datetime)
    assert body["interval"]["intervalSeconds"] == 600
    assert before + timedelta(seconds=599) <= next_run("interval") <= after + timedelta(seconds=601)

    listed = client.get(path).json()
    assert listed["workerId"] == worker_id
    assert {s["id"] for s in listed["schedules"]} == {b["id"] for b in body.values()}

    cron_id = body["cron"]["id"]
    assert client.delete(f"{path}/{cron_id}").json() == {"cancelled": True}
    assert client.delete(f"{path}/{cron_id}").json() == {"cancelled": False}
    assert cron_id not in {s["id"] for s in client.get(path).json()["schedules"]}
    assert client.delete(f"{path}/sch_unknown").status_code == 404
