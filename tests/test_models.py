"""Wire models: camelCase round trips, Decimal money, and input validation."""

from __future__ import annotations

import json
from decimal import Decimal

import pytest

from orchestrator.errors import InputError
from orchestrator.money import format_usd, from_micro, to_micro
from orchestrator.wire.models import (
    WORKER_SCHEDULE_ADAPTER,
    CreateSchedule,
    CreateWorker,
    ScheduleList,
    Worker,
)
from orchestrator.wire.routes import validate

WORKER_JSON = {
    "id": "wrk_1",
    "created_at": 1764400000,
    "error": None,
    "files": [
        {"filename": "report.md", "mediaType": "text/markdown", "url": "http://h/a"},
        {"filename": None, "mediaType": "application/octet-stream", "url": "http://h/b"},
    ],
    "incomplete_details": None,
    "messages": [{"role": "user", "parts": [{"type": "text", "text": "hi"}]}],
    "metadata": {"k": "v"},
    "object": "worker",
    "output": [
        {
            "id": "msg_1",
            "content": [{"text": "done", "type": "output_text"}],
            "role": "assistant",
            "status": "completed",
            "type": "message",
        }
    ],
    "output_text": "done",
    "running": False,
    "sources": [{"id": "src_1", "title": None, "type": "url", "url": "https://e.test"}],
    "status": "completed",
    "costs": {
        "internalCostUsd": 0.000001,
        "modelCostUsd": 0.123456,
        "sandboxCostUsd": 0,
        "toolCostUsd": 12.5,
    },
    "usage": {
        "cacheReadTokens": 1,
        "cacheWriteTokens": 2,
        "costUsd": 12.623457,
        "inputTokens": 3,
        "outputTokens": 4,
        "reasoningTokens": 5,
        "steps": 6,
        "totalTokens": 12,
        "credits": 7,
        "durationMs": 8,
    },
}


def test_worker_round_trip_is_exact() -> None:
    worker = Worker.model_validate_json(json.dumps(WORKER_JSON))
    assert worker.costs is not None and worker.usage is not None
    assert worker.costs.model_cost_usd == Decimal("0.123456")
    assert worker.usage.cost_usd == Decimal("12.623457")
    assert worker.files[0].media_type == "text/markdown"
    assert worker.to_wire() == WORKER_JSON


def test_worker_tolerates_unknown_fields_and_null_money() -> None:
    data = {**WORKER_JSON, "costs": None, "usage": None, "newField": {"x": 1}}
    worker = Worker.model_validate(data)
    assert worker.costs is None
    assert worker.to_wire()["newField"] == {"x": 1}


def test_decimal_money_is_parsed_from_text_not_float() -> None:
    text = json.dumps(WORKER_JSON).replace("0.123456", "0.30000000000000004")
    worker = Worker.model_validate_json(text)
    assert worker.costs is not None
    assert worker.costs.model_cost_usd == Decimal("0.30000000000000004")


@pytest.mark.parametrize(
    "when",
    [
        {"type": "scheduled", "date": "2030-01-02T03:04:05.000Z"},
        {"type": "delayed", "delayInSeconds": 30},
        {"type": "cron", "cron": "*/5 * * * *"},
        {"type": "interval", "intervalSeconds": 60},
    ],
)
def test_create_schedule_round_trip(when: dict[str, object]) -> None:
    body = {"input": "go", "when": when, "budget": "low"}
    assert CreateSchedule.model_validate(body).to_wire() == body


def test_schedule_list_union_round_trip() -> None:
    wire = {
        "schedules": [
            {
                "id": "s1",
                "budget": "low",
                "input": "a",
                "nextRunAt": "2030-01-01T00:00:00.000Z",
                "type": "scheduled",
            },
            {
                "id": "s2",
                "budget": "high",
                "input": "b",
                "nextRunAt": "2030-01-01T00:00:30.000Z",
                "type": "delayed",
                "delayInSeconds": 30,
            },
            {
                "id": "s3",
                "budget": "standard",
                "input": "c",
                "nextRunAt": "2030-01-01T00:05:00.000Z",
                "type": "cron",
                "cron": "*/5 * * * *",
            },
            {
                "id": "s4",
                "budget": "unlimited",
                "input": "d",
                "nextRunAt": "2030-01-01T00:01:00.000Z",
                "type": "interval",
                "intervalSeconds": 60,
            },
        ],
        "workerId": "wrk_1",
    }
    parsed = ScheduleList.model_validate(wire)
    assert [s.type for s in parsed.schedules] == ["scheduled", "delayed", "cron", "interval"]
    assert parsed.to_wire() == wire
    one = WORKER_SCHEDULE_ADAPTER.validate_python(wire["schedules"][3])  # type: ignore[index]
    assert one.interval_seconds == 60  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("model", "data", "field"),
    [
        (CreateWorker, {"input": ""}, "input"),
        (CreateWorker, {"input": "x", "budget": "huge"}, "budget"),
        (CreateWorker, {"input": 5}, "input"),
        (CreateSchedule, {"input": "x", "when": {"type": "cron", "cron": "* * *"}}, "when.cron"),
        (
            CreateSchedule,
            {"input": "x", "when": {"type": "cron", "cron": "61 * * * *"}},
            "when.cron",
        ),
        (
            CreateSchedule,
            {"input": "x", "when": {"type": "interval", "intervalSeconds": -5}},
            "when.interval_seconds",
        ),
        (
            CreateSchedule,
            {"input": "x", "when": {"type": "delayed", "delayInSeconds": 0}},
            "when.delay_in_seconds",
        ),
        (CreateSchedule, {"input": "x", "when": {"type": "weekly"}}, "when"),
        (
            CreateSchedule,
            {"input": "x", "when": {"type": "scheduled", "date": "tomorrow"}},
            "when.date",
        ),
    ],
)
def test_bad_input_names_the_field(model: type, data: dict[str, object], field: str) -> None:
    with pytest.raises(InputError) as info:
        validate(model, data)
    assert info.value.field == field


def test_micro_dollars_exact_and_half_even() -> None:
    assert to_micro(Decimal("0.123456")) == 123_456
    assert to_micro(Decimal("12.5")) == 12_500_000
    assert to_micro(Decimal("0.0000005")) == 0  # half to even
    assert to_micro(Decimal("0.0000015")) == 2
    assert from_micro(123_456) == Decimal("0.123456")
    assert format_usd(1_500_000) == "$1.500000"
    total = sum(to_micro(Decimal("0.1")) for _ in range(10))
    assert total == 1_000_000
