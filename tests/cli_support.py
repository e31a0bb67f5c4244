"""The CLI tests' environment: a Redis database and key prefix of each test's own, the
CLI run in process or as a child process, and the jobs, workers and turns they read."""

from __future__ import annotations

import itertools
import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import redis

from orchestrator.cli import main
from orchestrator.jobs.model import Job, Submission
from orchestrator.ops.redis_server import free_port
from orchestrator.store.jobs import RedisStore
from orchestrator.wire.models import Costs, Usage, Worker

from .processes import wait_for

ROOT = Path(__file__).resolve().parents[1]
_databases = itertools.count()


@dataclass
class Env:
    url: str
    prefix: str
    r: Any
    store: RedisStore

    def depth(self) -> int:
        """Messages waiting on the broker's ``api`` queue."""
        return int(self.r.llen(self.store.keys.broker_queue("api")))

    def job_ids(self) -> list[str]:
        return list(self.r.zrange(f"{self.prefix}:jobs", 0, -1))

    def our_keys(self) -> list[str]:
        return list(self.r.scan_iter(f"{self.prefix}:*"))


@pytest.fixture
def env(
    redis_url: str, key_prefix: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> Iterator[Env]:
    """REDIS_URL on a database of its own (1-15), KEY_PREFIX fresh, cwd without .env."""
    db = 1 + next(_databases) % 15
    url = re.sub(r"(/[0-9]+)?$", f"/{db}", redis_url, count=1)
    monkeypatch.setenv("REDIS_URL", url)
    monkeypatch.setenv("KEY_PREFIX", key_prefix)
    monkeypatch.setenv("MAX_INPUT_CHARS", "1000")
    # An upstream that is configured but never reached (the emulator test sets its own).
    monkeypatch.setenv("WORKERS_API_URL", f"http://127.0.0.1:{free_port()}")
    monkeypatch.setenv("WORKERS_API_KEY", "sk-cli-unused")
    monkeypatch.chdir(tmp_path)
    client = redis.Redis.from_url(url, decode_responses=True)
    yield Env(url, key_prefix, client, RedisStore(client, key_prefix))
    client.close()


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    """``orchestrator ARGV`` in-process: (exit status, stdout, stderr)."""
    try:
        code = main(list(argv))
    except SystemExit as exc:  # argparse's own usage errors and --help
        code = int(exc.code or 0)
    out, err = capsys.readouterr()
    return code, out, err


def queued_job(env: Env, **fields: Any) -> Job:
    job, created = env.store.create_job(Submission(input="a task", **fields))
    assert created
    return job


def worker(worker_id: str, usd: tuple[str, str, str, str], tokens: int) -> Worker:
    """A finished worker whose cumulative costs are ``usd`` (internal, model, sandbox, tool)."""
    costs = Costs(
        internal_cost_usd=Decimal(usd[0]),
        model_cost_usd=Decimal(usd[1]),
        sandbox_cost_usd=Decimal(usd[2]),
        tool_cost_usd=Decimal(usd[3]),
    )
    usage = Usage(
        cache_read_tokens=0,
        cache_write_tokens=0,
        cost_usd=sum((Decimal(x) for x in usd), Decimal(0)),
        input_tokens=tokens - tokens // 4,
        output_tokens=tokens // 4,
        reasoning_tokens=0,
        steps=1,
        total_tokens=tokens,
    )
    return Worker(id=worker_id, status="completed", costs=costs, usage=usage)


def day_ms(day: str) -> int:
    """Noon UTC of ``day`` in epoch ms (the ledger's days are UTC days)."""
    return int(datetime.fromisoformat(day + "T12:00:00+00:00").timestamp() * 1000)


def play_turn(env: Env, outputs: list[str]) -> None:
    """Stand in for the Celery side: take the first job through one turn."""
    job = env.store.get_job(wait_for(env.job_ids, 10, "the job to be queued")[0])
    assert job is not None
    env.store.set_submitted(job, Worker(id="wrk_play", status="running"))
    env.store.transition(job.id, "running")
    for index, text in enumerate(outputs):
        env.store.append_updates("wrk_play", index, [json.dumps({"text": text})])
        time.sleep(0.05)
    env.store.save_snapshot(Worker(id="wrk_play", status="completed", output_text="all done"))
    env.r.hset(env.store.keys.job(job.id), "update_to", len(outputs))
    env.store.transition(job.id, "completed")


def cli(
    env: Env, *argv: str, stdin: str = "", redis_url: str | None = None
) -> subprocess.CompletedProcess[str]:
    """``python -m orchestrator ARGV`` as a child process with this test's settings."""
    return subprocess.run(
        [sys.executable, "-m", "orchestrator", *argv],
        input=stdin,
        capture_output=True,
        text=True,
        env=child_env(env, redis_url),
        timeout=60,
    )


def child_env(env: Env, redis_url: str | None = None) -> dict[str, str]:
    """This process's environment with the test's Redis and key prefix, and this tree
    first on PYTHONPATH."""
    return {
        **os.environ,
        "REDIS_URL": redis_url or env.url,
        "KEY_PREFIX": env.prefix,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
    }
