"""A job whose upstream call began but whose task was then lost (its retry could not be
sent: the broker was away, as when Redis is killed and restarted mid-run) is sent again
by the lost-task sweep, and the second call finds the first one's upstream worker.

Real Redis (store and broker), the emulator over HTTP, the create step run in this
process; the broker's copy of the task is taken off its queue as a worker would, and the
step fails where the Redis outage made it fail (recording the submission)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from orchestrator.celery import API_QUEUE, make_app
from orchestrator.facade import Orchestrator
from orchestrator.jobs import steps, sweeps
from orchestrator.runtime import Runtime
from orchestrator.settings import load_settings
from orchestrator.store.connection import StoreError
from orchestrator.store.jobs import RedisStore, connect

from .conftest import Emulator


class LosesSubmission(RedisStore):
    """The real store; recording the submission fails once, as with Redis away."""

    failed = False

    def set_submitted(self, *args: Any, **kwargs: Any) -> bool:
        if not self.failed:
            self.failed = True
            raise StoreError("Connection refused (injected)")
        return super().set_submitted(*args, **kwargs)


def _queued_jobs(store: RedisStore) -> list[str]:
    held = store.r.lrange(store.keys.broker_queue(API_QUEUE), 0, -1)
    return [raw for raw in held if isinstance(raw, str)]


@pytest.fixture
def rt(redis_url: str, key_prefix: str, emulator: Emulator) -> Iterator[Runtime]:
    """A runtime over :class:`LosesSubmission`, the create step run in this process."""
    settings = load_settings(
        redis_url=redis_url, key_prefix=key_prefix, workers_api_url=emulator.url,
        workers_api_key=emulator.api_key, quick_relay_seconds=0,
    )  # fmt: skip
    runtime = Runtime(settings, LosesSubmission(connect(redis_url), key_prefix))
    yield runtime
    runtime.close()


def test_a_begun_job_whose_task_was_lost_is_sent_again_and_finds_its_worker(
    rt: Runtime, emulator: Emulator
) -> None:
    settings, store, app = rt.settings, rt.store, make_app(rt.settings)
    with Orchestrator(settings) as orch:
        job_id = orch.submit("lost after it began", budget="low").id
    # A worker takes the task off the queue (kombu pops it) ...
    assert len(_queued_jobs(store)) == 1
    store.r.delete(store.keys.broker_queue(API_QUEUE))
    # ... calls upstream, and cannot record the answer; its retry cannot be sent
    # either, so Celery drops the message: nothing of the task is left anywhere.
    with pytest.raises(StoreError):
        steps.start_turn(rt, app, job_id)
    job = store.require_job(job_id)
    assert (job.status, job.attempts, job.worker_id) == ("queued", 1, None)
    assert emulator.ledger()["workers_created"] == 1
    assert store.stalled(0) == [job_id]

    assert sweeps.resend_lost(app, rt, older_than_seconds=0) == 1
    assert any(job_id in raw for raw in _queued_jobs(store))

    # The task sent again: the same idempotency key finds the same upstream worker.
    job = steps.start_turn(rt, app, job_id)
    assert job.status == "submitted" and job.worker_id is not None
    assert emulator.ledger()["workers_created"] == 1
    assert store.stalled(0) == []
    # Nothing more to send: a second sweep finds the job submitted.
    store.r.delete(store.keys.broker_queue(API_QUEUE))
    assert sweeps.resend_lost(app, rt, older_than_seconds=0) == 0


def test_a_begun_job_that_ended_leaves_the_set_when_the_sweep_reads_it(rt: Runtime) -> None:
    settings, store, app = rt.settings, rt.store, make_app(rt.settings)
    with Orchestrator(settings) as orch:
        job_id = orch.submit("begun, then failed", budget="low").id
        with pytest.raises(StoreError):
            steps.start_turn(rt, app, job_id)
        assert store.r.zscore(store.keys.begun, job_id) is not None
        steps.fail(app, rt, job_id, "given up")
    assert store.stalled(0) == []
    assert store.r.zscore(store.keys.begun, job_id) is None
