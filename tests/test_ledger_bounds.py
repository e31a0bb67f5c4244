"""Absurd upstream figures never reach the ledger, a turn is posted all or nothing, and a
cumulative figure that falls is kept as an anomaly (issue #13, item 2).

Unit tests of the bounds, then the POST_TURN script on a real Redis, then ``finalize``
against a small hostile upstream of our own (Starlette on uvicorn, real HTTP) that
answers ``retrieve`` with whatever figures a test sets, as JSON text.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

import pytest
import redis
import uvicorn
from prometheus_client import REGISTRY
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from orchestrator.celery import app as celery_app
from orchestrator.emulator.server import BackgroundServer, loopback_socket
from orchestrator.jobs import steps
from orchestrator.jobs.model import Submission
from orchestrator.ledger import FIELDS, MAX_FIGURE, ROW_CEILING, FigureError, cumulative
from orchestrator.money import to_micro
from orchestrator.runtime import Runtime
from orchestrator.settings import load_settings
from orchestrator.store.jobs import RedisStore, now_ms
from orchestrator.store.ledger import posted_deltas, posted_falls
from orchestrator.wire.models import Costs, Worker

# --- figures ------------------------------------------------------------------------


def worker_json(worker_id: str, usd: str = "0.5", tokens: str = "100") -> str:
    """A finished worker as the wire sends it, with ``usd`` on the model and ``tokens``
    input tokens written into the JSON text as given (so 1e308 arrives as 1e308)."""
    return (
        f'{{"id": "{worker_id}", "object": "worker", "status": "completed", "running": false,'
        f' "costs": {{"internalCostUsd": 0, "modelCostUsd": {usd}, "sandboxCostUsd": 0,'
        f' "toolCostUsd": 0}}, "usage": {{"cacheReadTokens": 0, "cacheWriteTokens": 0,'
        f' "costUsd": {usd}, "inputTokens": {tokens}, "outputTokens": 0,'
        f' "reasoningTokens": 0, "steps": 1, "totalTokens": {tokens}}}}}'
    )


def worker(worker_id: str, usd: str = "0.5", tokens: str = "100") -> Worker:
    return Worker.model_validate_json(worker_json(worker_id, usd, tokens))


def constructed(**costs: Any) -> Worker:
    """A worker whose costs skip validation (what a buggy model or a future wire change
    could hand the ledger)."""
    base = {"internal_cost_usd": 0, "model_cost_usd": 0, "sandbox_cost_usd": 0}
    fields = {"tool_cost_usd": 0, **base, **costs}
    usage = worker("w").usage
    return Worker(id="w", status="completed", costs=Costs.model_construct(**fields), usage=usage)


@pytest.mark.parametrize(
    ("usd", "tokens", "field"),
    [
        ("1e308", "1", "costs.model_cost_usd"),  # was: unhandled decimal.InvalidOperation
        ("9.3e12", "1", "costs.model_cost_usd"),  # was: the script failing half-way
        ("1000000000.000001", "1", "costs.model_cost_usd"),  # just above the ceiling
        ("1", str(2**63), "usage.input_tokens"),  # was: the script failing half-way
        ("1", str(2**53 + 1), "usage.input_tokens"),  # was: stored as 2**53
        ("1", str(MAX_FIGURE + 1), "usage.input_tokens"),
    ],
)
def test_a_figure_above_the_ceiling_is_a_typed_error(usd: str, tokens: str, field: str) -> None:
    with pytest.raises(FigureError) as info:
        cumulative(worker("w", usd, tokens))
    assert info.value.field == field and field in str(info.value)


@pytest.mark.parametrize(
    ("value", "says"),
    [(Decimal("NaN"), "finite"), (Decimal("-Infinity"), "finite"), (Decimal("-1"), "negative")],
)
def test_a_non_finite_or_negative_figure_is_a_typed_error(value: Decimal, says: str) -> None:
    with pytest.raises(FigureError, match=says):
        cumulative(constructed(tool_cost_usd=value))


def test_the_ceiling_itself_is_exact() -> None:
    figures = cumulative(worker("w", "1000000000", str(MAX_FIGURE)))
    assert figures is not None
    assert figures["model_cost_micro"] == MAX_FIGURE and figures["input_tokens"] == MAX_FIGURE
    assert MAX_FIGURE < 2**53


def test_to_micro_refuses_absurd_amounts_with_a_value_error() -> None:
    for amount in ("1e308", "NaN", "Infinity"):
        with pytest.raises(ValueError) as info:
            to_micro(Decimal(amount))
        assert not isinstance(info.value, InvalidOperation)


# --- the POST_TURN script on a real Redis ---------------------------------------------


def dump(store: RedisStore) -> dict[str, Any]:
    """Everything under the store's prefix, by key."""
    r, out = store.r, {}
    for key in r.scan_iter(f"{store.keys.prefix}:*"):
        kind = r.type(key)
        if kind == "hash":  # as bytes: a worker's snapshot is kept compressed
            out[key] = r.execute_command("HGETALL", key, NEVER_DECODE=[])
        elif kind == "set":
            out[key] = r.smembers(key)
        elif kind == "stream":
            out[key] = r.xrange(key)
        elif kind == "zset":
            out[key] = r.zrange(key, 0, -1, withscores=True)
        else:
            out[key] = r.dump(key)
    return out


def new_job(store: RedisStore, **tags: str) -> Any:
    job, _ = store.create_job(Submission(input="x", budget="low", tags=tags or {"tenant": "a"}))
    return job


def test_a_refused_turn_writes_nothing_and_a_fixed_retry_posts_it_once(store: RedisStore) -> None:
    first = new_job(store)
    at = now_ms()
    assert store.post_turn(first, worker("wrk_1", "1.5", "10"), at) is not None
    second = new_job(store)
    before = dump(store)
    # The Python check refuses before the call ...
    with pytest.raises(FigureError):
        store.post_turn(second, worker("wrk_1", "9.3e12", "20"), at)
    assert dump(store) == before
    # ... and the script refuses on its own, before its first write, whatever reaches it
    # (every field in turn: an early one, a late one).
    members = [("day", "2024-01-01"), ("worker", "wrk_1")]
    keys = store.turn_keys("wrk_1", members, store.keys.ledger_turn(second.id))
    keys += [store.keys.job(second.id)]
    good = {name: "20000000" for name in FIELDS}
    for name in (FIELDS[0], FIELDS[-1]):
        for bad in ("9300000000000000000", str(2**63), str(MAX_FIGURE + 1), "-5", "1.5", "x"):
            figures = {**good, name: bad}
            args = [second.id, 2, json.dumps(figures), "2024-01-01", "wrk_1", at]
            with pytest.raises(redis.ResponseError, match="BADFIGURE"):
                store._post_turn(keys=keys, args=args)
            assert dump(store) == before, (name, bad)
    # The upstream fixes its figure: the retry posts the whole turn, once.
    posted = store.post_turn(second, worker("wrk_1", "2.25", "30"), at)
    assert posted is not None
    assert posted["model_cost_micro"] == 750_000 and posted["input_tokens"] == 20
    assert store.post_turn(second, worker("wrk_1", "2.25", "30"), at) is None
    total = store.costs()["total"]
    assert total["model_cost_micro"] == 2_250_000 and total["input_tokens"] == 30
    assert total["turns"] == 2


def test_a_post_that_would_overflow_a_row_writes_nothing(store: RedisStore) -> None:
    job = new_job(store)
    store.r.hset(store.keys.ledger_total, "model_cost_micro", ROW_CEILING)
    before = dump(store)
    with pytest.raises(FigureError, match="ROWFULL"):
        store.post_turn(job, worker("wrk_full", "0.01", "1"), now_ms())
    assert dump(store) == before


def test_large_figures_are_posted_and_recorded_exactly(store: RedisStore) -> None:
    job = new_job(store)
    usd, tokens = "987654321.123457", str(MAX_FIGURE - 1)
    posted = store.post_turn(job, worker("wrk_big", usd, tokens), now_ms())
    assert posted is not None
    assert posted["model_cost_micro"] == 987_654_321_123_457
    assert posted["input_tokens"] == MAX_FIGURE - 1
    assert store.turn_cost(job.id) == posted
    row = store.costs(by="worker")["rows"][0]
    assert row["model_cost_micro"] == 987_654_321_123_457 and row["total_tokens"] == MAX_FIGURE - 1


def test_a_falling_figure_is_kept_as_an_anomaly(store: RedisStore) -> None:
    first, second, third = new_job(store), new_job(store), new_job(store)
    at = now_ms()
    store.post_turn(first, worker("wrk_f", "2.0", "100"), at)
    batch = store.batch()
    index = store.post_turn_into(batch, second, worker("wrk_f", "1.5", "150"), at)
    assert index is not None
    reply = batch.execute()[index]
    assert posted_falls(reply) == {"model_cost_micro": 500_000, "usage_cost_micro": 500_000}
    deltas = posted_deltas(reply)
    assert deltas is not None and deltas["model_cost_micro"] == 0 and deltas["input_tokens"] == 50
    w = store.r.hgetall(store.keys.worker("wrk_f"))
    assert w["counted:model_cost_micro"] == "2000000" and w["fell:model_cost_micro"] == "500000"
    notes = [e["detail"] for e in store.history(second.id) if e["detail"]]
    assert len(notes) == 1 and "cost anomaly" in notes[0] and "model_cost_micro" in notes[0]
    # Back above the high mark: only the rise above it is posted, and the anomaly clears.
    posted = store.post_turn(third, worker("wrk_f", "2.5", "150"), at)
    assert posted is not None and posted["model_cost_micro"] == 500_000
    assert "fell:model_cost_micro" not in store.r.hgetall(store.keys.worker("wrk_f"))
    assert store.costs()["total"]["model_cost_micro"] == 2_500_000


# --- finalize against a hostile upstream ------------------------------------------------


class Upstream:
    """A tiny Workers API whose ``retrieve`` answers the JSON text set per worker."""

    def __init__(self) -> None:
        self.bodies: dict[str, str] = {}

        async def retrieve(request: Request) -> Response:
            body = self.bodies.get(request.path_params["wid"])
            if body is None:
                return JSONResponse({"error": {"message": "no such worker"}}, status_code=404)
            return Response(body, media_type="application/json")

        sock = loopback_socket()
        self.url = f"http://127.0.0.1:{sock.getsockname()[1]}"
        routes = [Route("/api/workers/{wid}", retrieve)]
        config = uvicorn.Config(Starlette(routes=routes), log_level="warning")
        self.running = BackgroundServer(config, sock, "upstream")

    def __enter__(self) -> Upstream:
        if not self.running.start(timeout=10):
            raise RuntimeError("the hostile upstream did not start")
        return self

    def __exit__(self, *exc: object) -> None:
        self.running.stop()


@pytest.fixture
def upstream() -> Iterator[Upstream]:
    with Upstream() as up:
        yield up


@pytest.fixture
def rt(store: RedisStore, upstream: Upstream, redis_url: str, tmp_path: Path) -> Runtime:
    settings = load_settings(
        redis_url=redis_url, key_prefix=store.keys.prefix, files_dir=tmp_path / "files",
        workers_api_url=upstream.url, workers_api_key="sk-hostile", max_retries=0,
    )  # fmt: skip
    runtime = Runtime(settings, store)
    runtime.limits.set("tag:tenant=acme", 1)
    runtime.budgets.set_cap(scope="tag:tenant=acme", limit_usd=Decimal("100"))
    return runtime


def begun(rt: Runtime, worker_id: str) -> Any:
    """A job as the create step leaves it: slot and hold taken, submitted as ``worker_id``."""
    job = new_job(rt.store, tenant="acme")
    assert rt.limits.acquire(job) is None
    assert rt.budgets.reserve(job) > 0
    assert rt.store.set_submitted(job, Worker(id=worker_id))
    return rt.store.require_job(job.id)


def counter(field: str) -> float:
    value = REGISTRY.get_sample_value("orchestrator_cost_anomalies_total", {"field": field})
    return value or 0.0


@pytest.mark.parametrize(
    ("usd", "tokens"), [("1e308", "1"), ("9.3e12", "1"), ("1", str(2**63)), ("1", str(2**53 + 1))]
)
def test_finalize_fails_a_job_with_an_absurd_figure_and_frees_what_it_took(
    rt: Runtime, upstream: Upstream, usd: str, tokens: str
) -> None:
    job = begun(rt, "wrk_absurd")
    upstream.bodies["wrk_absurd"] = worker_json("wrk_absurd", usd, tokens)
    ledger_before = {k: v for k, v in dump(rt.store).items() if ":ledger:" in k}

    assert steps.finalize(rt, celery_app, job.id) == "failed"

    after = rt.store.require_job(job.id)
    assert after.status == "failed" and "cost not posted" in str(after.error)
    assert {k: v for k, v in dump(rt.store).items() if ":ledger:" in k} == ledger_before
    assert rt.store.turn_cost(job.id) is None
    assert rt.budgets.release(job.id) is None  # the hold was given back
    assert rt.limits.status()[0]["running"] == 0  # and the slot
    assert rt.store.r.zscore(rt.store.keys.follows, job.id) is None
    # A redelivered finalize changes nothing.
    assert steps.finalize(rt, celery_app, job.id) == "noop"


def test_finalize_reports_a_falling_figure(rt: Runtime, upstream: Upstream) -> None:
    first = begun(rt, "wrk_fall")
    upstream.bodies["wrk_fall"] = worker_json("wrk_fall", "3.0", "100")
    assert steps.finalize(rt, celery_app, first.id) == "completed"
    second = begun(rt, "wrk_fall")
    upstream.bodies["wrk_fall"] = worker_json("wrk_fall", "2.0", "120")
    before = counter("model_cost_micro")
    assert steps.finalize(rt, celery_app, second.id) == "completed"
    assert counter("model_cost_micro") == before + 1
    notes = [e["detail"] for e in rt.store.history(second.id) if e["detail"]]
    assert any("cost anomaly" in n and "model_cost_micro fell by 1000000" in n for n in notes)
    total = rt.store.costs()["total"]
    assert total["model_cost_micro"] == 3_000_000 and total["input_tokens"] == 120
    assert rt.budgets.release(second.id) is None


def test_an_error_in_place_of_the_posts_reply_is_no_refusal() -> None:
    """A cluster failing over answers CLUSTERDOWN where POST_TURN's reply would be: the
    step raises it as it came and is tried again; only the script's own refusals fail
    the job (as FigureError)."""
    down = redis.exceptions.ClusterDownError("The cluster is down")
    with pytest.raises(redis.exceptions.ClusterDownError):
        posted_deltas(down)
    with pytest.raises(FigureError):
        posted_deltas(redis.ResponseError("BADFIGURE model_cost_micro"))
