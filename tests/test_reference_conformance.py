"""What a generated SDK of the reference would see: every route of the reference, called
with plain httpx, and every answer checked field by field against the reference's names
(snake_case there, camelCase on the wire where multi-word, per wire.md)."""

from __future__ import annotations

import re
from typing import Any

import httpx

from .conftest import Emulator
from .processes import wait_for

WORKER_FIELDS = {
    "id": str, "created_at": (int, type(None)), "error": type(None), "files": list,
    "incomplete_details": type(None), "messages": list, "metadata": dict, "object": str,
    "output": list, "output_text": str, "running": bool, "sources": list, "status": str,
    "costs": (dict, type(None)), "usage": (dict, type(None)),
}  # fmt: skip
FILE_FIELDS = {"filename": (str, type(None)), "mediaType": str, "url": str}
OUTPUT_FIELDS = {"id": str, "content": list, "role": str, "status": str, "type": str}
SOURCE_FIELDS = {"id": str, "title": (str, type(None)), "type": str, "url": str}
COST_FIELDS = {"internalCostUsd", "modelCostUsd", "sandboxCostUsd", "toolCostUsd"}
USAGE_FIELDS = {
    "cacheReadTokens", "cacheWriteTokens", "costUsd", "inputTokens", "outputTokens",
    "reasoningTokens", "steps", "totalTokens",
}  # fmt: skip
SCHEDULE_FIELDS = {
    "scheduled": {"id", "budget", "input", "nextRunAt", "type"},
    "delayed": {"id", "budget", "input", "nextRunAt", "type", "delayInSeconds"},
    "cron": {"id", "budget", "input", "nextRunAt", "type", "cron"},
    "interval": {"id", "budget", "input", "nextRunAt", "type", "intervalSeconds"},
}
ISO = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(Z|[+-]\d\d:\d\d)$")


def check(obj: dict[str, Any], fields: dict[str, Any]) -> None:
    for name, kind in fields.items():
        assert name in obj, f"missing {name}"
        assert isinstance(obj[name], kind), (name, obj[name])


def test_every_route_of_the_reference(emulator: Emulator) -> None:
    emulator.configure(turn_seconds=0.2, events_per_turn=4)
    api = httpx.Client(
        base_url=f"{emulator.url}/api",
        headers={"Authorization": f"Bearer {emulator.api_key}"},
        timeout=10,
    )
    # workers.create
    worker = api.post("/workers", json={"input": "hello", "budget": "low"}).json()
    check(worker, WORKER_FIELDS)
    assert worker["object"] == "worker" and worker["status"] in ("running", "pending")
    wid = worker["id"]
    # workers.stream_updates, until the turn ends
    with api.stream("GET", f"/workers/{wid}/stream") as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        data = [line for line in response.iter_lines() if line.startswith("data:")]
    assert len(data) == 4
    # workers.retrieve
    done = api.get(f"/workers/{wid}").json()
    check(done, WORKER_FIELDS)
    assert done["status"] == "completed" and done["running"] is False
    for f in done["files"]:
        check(f, FILE_FIELDS)
    for out in done["output"]:
        check(out, OUTPUT_FIELDS)
        assert out["role"] == "assistant" and out["type"] == "message"
        assert all(
            c["type"] == "output_text" and isinstance(c["text"], str) for c in out["content"]
        )
    for src in done["sources"]:
        check(src, SOURCE_FIELDS)
    assert set(done["costs"]) == COST_FIELDS
    assert all(isinstance(v, (int, float)) and v >= 0 for v in done["costs"].values())
    assert set(done["usage"]) >= USAGE_FIELDS
    # workers.retrieve with stream=true replays the same events
    with api.stream("GET", f"/workers/{wid}", params={"stream": "true"}) as response:
        assert [ln for ln in response.iter_lines() if ln.startswith("data:")] == data
    # workers.continue_
    again = api.post(f"/workers/{wid}", json={"input": "more"}).json()
    assert again["id"] == wid
    # workers.retrieve_email: a JSON string
    email = api.get(f"/workers/{wid}/email").json()
    assert isinstance(email, str) and "@" in email
    # workers.retrieve_file: raw bytes of a nested path
    def ended() -> dict[str, Any] | None:  # the continued turn, with its files
        worker = api.get(f"/workers/{wid}").json()
        return None if worker["running"] else worker

    final = wait_for(ended, 10, "the continued turn to end")
    nested = next(f for f in final["files"] if "/" in (f["filename"] or ""))
    raw = api.get(f"/workers/{wid}/files/{nested['filename']}").content
    assert raw and httpx.get(nested["url"], headers=api.headers).content == raw
    # workers.schedules.create / list / cancel, all four kinds
    whens = [
        {"type": "scheduled", "date": "2031-01-01T00:00:00Z"},
        {"type": "delayed", "delayInSeconds": 60},
        {"type": "cron", "cron": "0 9 * * 1"},
        {"type": "interval", "intervalSeconds": 600},
    ]
    created = [
        api.post(f"/workers/{wid}/schedules", json={"input": "go", "when": w}).json() for w in whens
    ]
    for schedule in created:
        assert set(schedule) == SCHEDULE_FIELDS[schedule["type"]], schedule
        assert ISO.match(schedule["nextRunAt"]) and schedule["budget"] in (
            "low", "standard", "high", "unlimited",
        )  # fmt: skip
    listing = api.get(f"/workers/{wid}/schedules").json()
    assert set(listing) == {"schedules", "workerId"} and listing["workerId"] == wid
    assert {s["id"] for s in listing["schedules"]} == {s["id"] for s in created}
    cancelled = api.delete(f"/workers/{wid}/schedules/{created[0]['id']}").json()
    assert cancelled == {"cancelled": True}
