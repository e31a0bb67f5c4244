"""A task whose job ended without completing raises ``JobEnded`` (Flower's FAILURE,
with the reason), after its cleanup; a job that ended outside any task (in the
follower) gets a finalize task sent, so it too shows as failed."""

from __future__ import annotations

import pickle

import pytest

from orchestrator import runtime
from orchestrator.errors import JobEnded
from orchestrator.facade import Orchestrator
from orchestrator.jobs import steps
from orchestrator.jobs.model import FAILED_ENDS, TERMINAL, validate_submission
from orchestrator.wire.models import Worker


def a_running_job(orch: Orchestrator, worker_id: str, **fields: object) -> str:
    sub = validate_submission(1000, kind="create", input="end me", budget="low", **fields)
    job, _ = orch.store.create_job(sub)
    orch.store.set_submitted(job, Worker(id=worker_id))
    return job.id


def test_failed_ends_are_every_terminal_state_but_completed() -> None:
    assert {"completed"} | FAILED_ENDS == TERMINAL and "failed" in FAILED_ENDS
    ended = JobEnded("job_1", "failed", "HTTP 400: bad input")
    assert str(ended) == "job job_1 failed: HTTP 400: bad input"
    assert repr(ended) == "JobEnded('job_1', 'failed', 'HTTP 400: bad input')"
    again = pickle.loads(pickle.dumps(ended))  # prefork hands it between processes
    assert (again.job_id, again.status, again.reason) == ("job_1", "failed", ended.reason)


def test_the_finalize_task_of_a_failed_job_raises_job_ended(
    orch: Orchestrator, monkeypatch: pytest.MonkeyPatch
) -> None:
    from workers_tasks import tasks

    monkeypatch.setattr(tasks, "get_runtime", lambda: orch.rt)
    job_id = a_running_job(orch, "wrk_ended")
    orch.store.transition(job_id, "failed", "stream broke for good")
    with pytest.raises(JobEnded) as caught:
        tasks.finalize(job_id)
    assert caught.value.reason == "stream broke for good"
    assert JobEnded in tasks.finalize.throws  # logged as one line, no traceback

    fine = a_running_job(orch, "wrk_fine")
    orch.store.transition(fine, "completed")
    assert steps.ended_unfinished(orch.rt, fine) is None
    assert tasks.finalize(fine) == "noop"


def test_a_job_the_follower_failed_gets_a_finalize_task_that_names_it(
    orch: Orchestrator, monkeypatch: pytest.MonkeyPatch
) -> None:
    from workers_tasks import follower_service

    sent: list[tuple[str, list[str], str]] = []

    class Producer:
        def send_task(self, name: str, args: list[str], argsrepr: str, **_: object) -> None:
            sent.append((name, args, argsrepr))

    monkeypatch.setattr(follower_service, "app", Producer())
    monkeypatch.setattr(runtime, "get_runtime", lambda: orch.rt)
    job_id = a_running_job(orch, "wrk_broken", tags={"tenant": "acme"})
    orch.store.transition(job_id, "failed", "stream broke for good")
    follower_service.settle(job_id)
    ((name, args, shown),) = sent
    assert (name, args) == ("workers.finalize", [job_id])
    assert shown.startswith(f"{job_id} budget=low tags=tenant=acme input=")
