"""A turn relayed whole by its create task is posted and completed in one script call
(CHAIN): the completion (update_to, the fold, ``completed``, the follow lease, the
slots) runs only after the post, never without it. A refused post leaves the job as the
two-call path leaves it: nothing posted, nothing completed, the job failed and what it
held given back. Real Redis, real HTTP upstream (the hostile one of test_ledger_bounds).
"""

from __future__ import annotations

import json

import redis

from orchestrator.celery import app as celery_app
from orchestrator.jobs import steps
from orchestrator.ledger import ROW_CEILING
from orchestrator.runtime import Runtime
from orchestrator.store.batch import Chain
from orchestrator.store.jobs import RedisStore

from .test_ledger_bounds import Upstream, begun, dump, new_job, rt, upstream, worker_json

__all__ = ["rt", "upstream"]  # the fixtures, used by name

UPDATES = [json.dumps({"type": "text", "n": i}) for i in range(3)]


def relayed(rt: Runtime, worker_id: str) -> object:
    """A job as the create task leaves it once it relayed the whole turn itself."""
    job = begun(rt, worker_id)
    assert rt.store.append_updates(worker_id, 0, UPDATES) == len(UPDATES)
    return rt.store.require_job(job.id)


def test_a_refused_post_completes_nothing(rt: Runtime, upstream: Upstream) -> None:
    store = rt.store
    job = relayed(rt, "wrk_full")
    upstream.bodies["wrk_full"] = worker_json("wrk_full", "0.25", "10")
    store.r.hset(store.keys.ledger_total, "model_cost_micro", ROW_CEILING)  # ROWFULL
    ledger_before = {k: v for k, v in dump(store).items() if ":ledger:" in k}

    assert steps.finalize(rt, celery_app, job.id, read=job, updates=UPDATES) == "failed"

    after = store.require_job(job.id)
    assert after.status == "failed" and "ROWFULL" in str(after.error)
    assert [e["status"] for e in store.history(job.id)][-1] == "failed"
    assert "completed" not in [e["status"] for e in store.history(job.id)]
    assert store.r.hget(store.keys.job(job.id), "update_to") is None
    assert store.r.hexists(store.keys.worker("wrk_full"), "turn:0") == 0  # not folded
    assert store.r.xlen(store.keys.updates("wrk_full")) == len(UPDATES)
    assert {k: v for k, v in dump(store).items() if ":ledger:" in k} == ledger_before
    assert store.turn_cost(job.id) is None
    assert rt.budgets.release(job.id) is None  # the hold was given back
    assert rt.limits.status()[0]["running"] == 0  # and the slot
    assert store.r.zscore(store.keys.follows, job.id) is None
    assert steps.finalize(rt, celery_app, job.id) == "noop"


def test_a_posted_turn_is_completed_in_the_same_call(rt: Runtime, upstream: Upstream) -> None:
    store = rt.store
    job = relayed(rt, "wrk_ok")
    upstream.bodies["wrk_ok"] = worker_json("wrk_ok", "0.25", "10")

    assert steps.finalize(rt, celery_app, job.id, read=job, updates=UPDATES) == "completed"

    after = store.require_job(job.id)
    assert after.status == "completed" and after.update_to == len(UPDATES)
    cost = store.turn_cost(job.id)
    assert cost is not None and cost["model_cost_micro"] == 250_000
    assert store.r.hexists(store.keys.worker("wrk_ok"), "turn:0") == 1  # folded
    assert [i for i, _ in store.read_updates("wrk_ok")] == [0, 1, 2]
    assert rt.budgets.release(job.id) is None
    assert rt.limits.status()[0]["running"] == 0
    assert store.r.zscore(store.keys.follows, job.id) is None
    # Redelivered: nothing posted twice.
    assert steps.finalize(rt, celery_app, job.id, read=after, updates=UPDATES) == "noop"
    assert store.turn_cost(job.id) == cost
    assert store.costs()["total"]["turns"] == 1


def test_the_chain_runs_nothing_after_an_error_reply(store: RedisStore) -> None:
    job = new_job(store)
    marker = store.keys.job(job.id)
    batch, chain = store.batch(), Chain()
    # POST_TURN with figures that are not JSON refuses (BADFIGURE) before any write.
    keys = [*store.turn_keys("wrk_x", [], store.keys.ledger_turn(job.id)), marker]
    chain.script(store._post_turn, keys, [job.id, 0, "not json", 1])
    chain.pipe.hset(marker, "after", "1")
    at = store.chain_into(batch, chain)
    reply = batch.execute(raise_on_error=False)[at]
    assert isinstance(reply, redis.ResponseError) and "BADFIGURE" in str(reply)
    assert store.r.hget(marker, "after") is None
    # The same calls without the refusal: both run, their replies in order.
    ok, chain = store.batch(), Chain()
    chain.pipe.hset(marker, "first", "1")
    chain.pipe.hset(marker, "after", "1")
    at = store.chain_into(ok, chain)
    assert ok.execute()[at] == [1, 1]
    assert store.r.hget(marker, "after") == "1"
