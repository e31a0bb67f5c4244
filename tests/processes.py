"""Real processes for end-to-end tests: Celery workers (and beat) as subprocesses,
with logs captured to files and readiness detected from their log lines."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import redis

from orchestrator.store.keys import Keys


def wait_for(predicate: Callable[[], object], timeout: float, what: str, interval: float = 0.05):
    """Poll ``predicate`` until truthy; fail the test (AssertionError) after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


class Proc:
    """A child process whose combined output goes to ``log``."""

    def __init__(self, args: list[str], env: dict[str, str], log: Path, ready_line: str) -> None:
        self.args = args
        self.env = env
        self.log = log
        self.ready_line = ready_line
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 60.0) -> Proc:
        out = open(self.log, "ab")  # noqa: SIM115 - closed with the process
        self.process = subprocess.Popen(
            self.args, env=self.env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
        out.close()
        start_size = 0
        wait_for(
            lambda: self._ready(start_size), timeout, f"{self.args[2:5]} to be ready ({self.log})"
        )
        return self

    def _ready(self, offset: int) -> bool:
        assert self.process is not None
        if self.process.poll() is not None:
            raise AssertionError(f"process exited early:\n{self.text()[-3000:]}")
        return self.ready_line in self.text()[offset:]

    def text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def kill(self) -> None:
        """SIGKILL the whole process group: no clean shutdown, no acks."""
        if self.process and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=10)

    def stop(self, timeout: float = 20.0) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()


def stack_env(
    redis_url: str, prefix: str, api_url: str, api_key: str, **extra: str
) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("REDIS_", "WORKERS_"))}
    env.update(
        REDIS_URL=redis_url,
        KEY_PREFIX=prefix,
        WORKERS_API_URL=api_url,
        WORKERS_API_KEY=api_key,
        MAX_RETRIES="8",
        RETRY_INITIAL_DELAY="0.05",
        RETRY_MAX_DELAY="0.5",
        PYTHONUNBUFFERED="1",
    )
    env.update(extra)
    return env


def celery_worker(
    env: dict[str, str],
    log: Path,
    *,
    queues: str = "api,streams",
    name: str = "w1",
    concurrency: int = 8,
) -> Proc:
    args = [
        sys.executable, "-m", "orchestrator", "worker",
        "--queues", queues, "--concurrency", str(concurrency), "--hostname", f"{name}@%h",
        "--loglevel", "INFO",
    ]  # fmt: skip
    return Proc(args, env, log, ready_line="ready.")


def broker_depth(env: dict[str, str], queues: tuple[str, ...] = ("api", "streams")) -> int:
    """Messages waiting on the broker queues of the deployment ``env`` describes."""
    r = redis.Redis.from_url(env["REDIS_URL"])
    return sum(int(r.llen(Keys(env["KEY_PREFIX"]).broker_queue(q))) for q in queues)
