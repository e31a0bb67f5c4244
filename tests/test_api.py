"""The Orchestrator facade without workers: validation, idempotency, what gets written."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import date
from typing import Any

import pytest
import redis

from orchestrator.errors import InputError
from orchestrator.facade import Orchestrator
from orchestrator.settings import load_settings


@pytest.fixture
def orch(redis_url: str, key_prefix: str) -> Iterator[Orchestrator]:
    settings = load_settings(redis_url=redis_url, key_prefix=key_prefix, max_input_chars=1000)
    with Orchestrator(settings) as o:
        yield o


def written(orch: Orchestrator) -> tuple[int, list[Any]]:
    r = redis.Redis.from_url(orch.settings.redis_url or "")
    keys = list(r.scan_iter(f"{orch.settings.key_prefix}:*"))
    return r.llen(orch.store.keys.broker_queue("api")), keys


@pytest.mark.parametrize(
    ("call", "field"),
    [
        (lambda o: o.submit(""), "input"),
        (lambda o: o.submit("   \n "), "input"),
        (lambda o: o.submit("x" * 1001), "input"),
        (lambda o: o.submit("bell \x07 inside"), "input"),
        (lambda o: o.submit("ok", budget="huge"), "budget"),
        (lambda o: o.submit("ok", tags={"Tenant Name": "acme"}), "tags"),
        (lambda o: o.submit("ok", tags={"tenant": "has space"}), "tags"),
        (lambda o: o.submit("ok", tags={"tenant": ""}), "tags"),
        (lambda o: o.submit("ok", idempotency_key="spaces are bad"), "idempotency_key"),
        (lambda o: o.submit(123), "input"),
        (lambda o: o.continue_("job_unknown", "more"), "job_id"),
        (lambda o: o.continue_("", "more"), "worker_id"),
        (lambda o: o.continue_("wrk/../x", "more"), "worker_id"),
        (lambda o: o.get("job_nope"), "job_id"),
        (lambda o: o.get("not-a-job"), "job_id"),
        (lambda o: list(o.updates("job_nope")), "job_id"),
        (lambda o: o.costs(by="month"), "by"),
        (lambda o: o.costs(by="day", since=date(2026, 2, 1), until=date(2026, 1, 1)), "until"),
    ],
)
def test_bad_input_is_refused_and_nothing_is_written(
    orch: Orchestrator, call: Any, field: str
) -> None:
    before = written(orch)
    with pytest.raises(InputError) as info:
        call(orch)
    assert info.value.field == field, info.value
    assert str(info.value).startswith(field)
    assert written(orch) == before


def test_submit_writes_a_queued_job_and_one_message(orch: Orchestrator) -> None:
    depth = written(orch)[0]
    job = orch.submit("hello", budget="low", tags={"tenant": "acme"})
    assert job.status == "queued" and job.budget == "low" and job.tags == {"tenant": "acme"}
    assert written(orch)[0] == depth + 1
    assert [h["status"] for h in orch.history(job.id)] == ["queued"]
    assert orch.store.unsent(0) == []


def test_same_idempotency_key_same_job_one_message(orch: Orchestrator) -> None:
    depth = written(orch)[0]
    first = orch.submit("once", idempotency_key="order-42")
    second = orch.submit("once", idempotency_key="order-42")
    assert first.id == second.id
    assert written(orch)[0] == depth + 1


def test_costs_of_an_empty_ledger_are_zero(orch: Orchestrator) -> None:
    report = orch.costs(by="tag")
    assert report["rows"] == []
    assert report["total"]["usage_cost_micro"] == 0 and report["total"]["turns"] == 0


def test_updates_refuse_an_after_or_timeout_of_the_wrong_kind(orch: Orchestrator) -> None:
    job = orch.submit("hello")
    for kwargs, field in (({"after": "3"}, "after"), ({"after": -9}, "after"),
                          ({"after": True}, "after"), ({"timeout": "x"}, "timeout")):  # fmt: skip
        with pytest.raises(InputError) as info:
            list(orch.updates(job.id, block=False, **kwargs))
        assert info.value.field == field, info.value
