"""``Orchestrator.wait`` on a real Redis, without workers: a job that ends at the worst
moment still wakes the waiter at once."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest

from orchestrator.facade import Orchestrator
from orchestrator.jobs.model import Job, validate_submission
from orchestrator.settings import load_settings


@pytest.fixture
def orch(redis_url: str, key_prefix: str) -> Iterator[Orchestrator]:
    with Orchestrator(load_settings(redis_url=redis_url, key_prefix=key_prefix)) as o:
        yield o


def test_wait_returns_at_once_when_the_job_ends_right_after_its_status_is_read(
    orch: Orchestrator, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The job completes between wait()'s read of its status and its block on the job's
    history. Had the history's last id been read after the status, it would already be
    the completion's, and wait() would block for a next entry that never comes (5 s)."""
    job, _ = orch.store.create_job(validate_submission(100, input="ends at the worst moment"))
    assert orch.store.transition(job.id, "submitted")
    real_from_hash = Job.from_hash
    ended: list[str] = []

    def read_then_end(data: dict[str, str]) -> Job:
        read = real_from_hash(data)
        if read.id == job.id and not ended:
            ended.append(read.status)
            assert orch.store.transition(job.id, "completed")  # just after the read
        return read

    monkeypatch.setattr(Job, "from_hash", staticmethod(read_then_end))
    started = time.monotonic()
    done: Any = orch.wait(job.id, timeout=10)
    elapsed = time.monotonic() - started
    assert ended == ["submitted"]
    assert done.status == "completed"
    assert elapsed < 2, f"wait() blocked {elapsed:.1f}s for an entry already written"
