"""Flower tells the truth: with a real Celery worker and a real Flower process, a job
refused by its budget shows as a FAILURE task with the reason, a completed one as
SUCCESS, task arguments name the job, tenant and schedule, and no heartbeat task
crowds the list (the heartbeats still run: ``orchestrator health`` reads them)."""

from __future__ import annotations

import secrets
import socket
import sys
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest

from orchestrator.facade import Orchestrator

from .conftest import Emulator
from .processes import (
    Proc,
    broker_depth,
    celery_worker,
    stack_env,
    start_on_a_free_port,
    wait_for,
)

pytestmark = pytest.mark.slow


# threads: the one-box default; prefork: the api queue's pool in deployments (the
# exception then crosses from the pool child to the parent, which sends the event).
@pytest.mark.parametrize("pool", ["threads", "prefork"])
def test_flower_shows_a_refused_job_as_failure_with_its_reason_and_no_heartbeats(
    redis_url: str,
    key_prefix: str,
    emulator: Emulator,
    orch: Orchestrator,
    tmp_path: Path,
    pool: str,
) -> None:
    password = secrets.token_urlsafe(12)
    env = stack_env(
        redis_url, key_prefix, emulator.url, emulator.api_key,
        FLOWER_USER="admin", FLOWER_PASSWORD=password,
    )  # fmt: skip
    # Flower first: it learns of tasks from events, so it must be listening.
    flower, port = start_on_a_free_port(
        lambda port: Proc(
            [sys.executable, "-m", "orchestrator", "flower", "--port", str(port)],
            env, tmp_path / "flower.log", "Visit me at",
        )
    )  # fmt: skip
    node = f"fl{key_prefix}@{socket.gethostname()}"
    worker = celery_worker(env, tmp_path / "worker.log", name=f"fl{key_prefix}", pool=pool)
    http = httpx.Client(base_url=f"http://127.0.0.1:{port}", auth=("admin", password), timeout=10)
    try:
        worker.start(timeout=60)
        wait_for(lambda: orch.store.heartbeat(node), 30, "the worker's first heartbeat")

        good = orch.submit("finish me", tags={"tenant": "globex"})
        assert orch.wait(good.id, timeout=60).status == "completed"
        orch.budgets.set_cap(
            scope="global", period="day", limit_usd=Decimal("0.000001"), on_exceed="refuse"
        )
        bad = orch.submit("refuse me", tags={"tenant": "acme"})
        refused = orch.wait(bad.id, timeout=60)
        assert refused.status == "failed" and "budget cap" in (refused.error or "")

        def task_of(job_id: str, state: str) -> dict[str, Any] | None:
            tasks = http.get("/api/tasks").raise_for_status().json()
            return next(
                (
                    t for t in tasks.values()
                    if t["name"] == "workers.create" and job_id in (t.get("args") or "")
                    and t["state"] == state
                ),
                None,
            )  # fmt: skip

        failed = wait_for(lambda: task_of(bad.id, "FAILURE"), 30, "Flower to show the FAILURE")
        assert "JobEnded" in failed["exception"] and "budget cap" in failed["exception"]
        assert "tags=tenant=acme" in failed["args"] and "input='refuse me'" in failed["args"]
        done = wait_for(lambda: task_of(good.id, "SUCCESS"), 30, "Flower to show the SUCCESS")
        assert "tags=tenant=globex" in done["args"]

        tasks = http.get("/api/tasks").raise_for_status().json()
        assert [t for t in tasks.values() if t["name"] == "workers.heartbeat"] == []
        assert orch.store.heartbeat(node) is not None  # beating all along
        # The failed task was acked, not left to be redelivered.
        assert broker_depth(env) == 0 and orch.store.broker.held_tasks() == []
        # An expected end: one log line, no traceback.
        worker_log = (tmp_path / "worker.log").read_text()
        assert "raised expected: JobEnded" in worker_log and "Traceback" not in worker_log
    finally:
        http.close()
        worker.stop()
        flower.stop()
