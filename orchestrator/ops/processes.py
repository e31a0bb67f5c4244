"""Project processes (Celery workers, beat, Flower, the emulator) as children: started
in their own session, ready when their log shows a line, stopped by process group.

The dev stack, the end-to-end tests and the benchmarks all launch processes this way;
this is the one copy. A child gets its own session so that signalling its group also
reaches what it started (Celery's pool), and nothing outlives a stop.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from orchestrator.runtime import store_for
from orchestrator.schedules.beat import READY_LINE as BEAT_READY
from orchestrator.settings import Settings, load_settings

__all__ = [
    "BEAT_READY",
    "GATEWAY_LISTENING",
    "GATEWAY_READY",
    "QUICK_RETRIES",
    "WORKER_READY",
    "Proc",
    "broker_depth",
    "celery_beat",
    "celery_worker",
    "deployment_env",
    "gateway_server",
    "settings_of",
    "wait_for",
]

GATEWAY_READY = "Application startup complete"  # uvicorn's, once the lifespan ran
# uvicorn's once its socket is bound: after the lifespan with one process (whose
# "startup complete" comes before the bind), before the workers with several.
GATEWAY_LISTENING = "Uvicorn running on"
WORKER_READY = "ready."  # Celery's "celery@host ready." once it consumes
# Retry settings that keep a test or chaos run short when the upstream fails on purpose.
QUICK_RETRIES = {"MAX_RETRIES": "8", "RETRY_INITIAL_DELAY": "0.05", "RETRY_MAX_DELAY": "0.5"}
LOG_TAIL_LINES = 30  # of a child's log, shown when it exits before it is ready

T = TypeVar("T")


def wait_for(predicate: Callable[[], T], timeout: float, what: str, every: float = 0.05) -> T:
    """Poll ``predicate`` until truthy and return its value; TimeoutError after
    ``timeout`` seconds (the predicate is asked at least once)."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(every)


class Proc:
    """A child process in its own session, stdout and stderr appended to ``log``;
    ready once ``ready_line`` appears in that log (at once when it is empty)."""

    def __init__(
        self,
        args: list[str],
        env: dict[str, str],
        log: Path,
        ready_line: str = "",
        *,
        cwd: Path | None = None,
    ) -> None:
        self.args, self.env, self.log, self.ready_line, self.cwd = args, env, log, ready_line, cwd
        self.process: subprocess.Popen[bytes] | None = None
        # Where this launch's output starts: a log kept from an earlier run already
        # holds a ready line, which must not pass for this run's.
        self._since = 0

    @property
    def name(self) -> str:
        return self.log.stem

    @property
    def pid(self) -> int:
        assert self.process is not None, "not launched"
        return self.process.pid

    def launch(self) -> Proc:
        """Start the process without waiting for it to be ready."""
        with open(self.log, "ab") as out:
            self._since = out.tell()
            self.process = subprocess.Popen(
                self.args, env=self.env, stdout=out, stderr=subprocess.STDOUT, cwd=self.cwd,
                start_new_session=True,
            )  # fmt: skip
        return self

    def start(self, timeout: float = 60.0) -> Proc:
        """Start the process and wait (bounded) until it is ready."""
        self.launch()
        wait_for(self.is_ready, timeout, f"{self.name} to be ready (log: {self.log})")
        return self

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def is_ready(self) -> bool:
        """Whether the ready line is in the log; RuntimeError if the process has exited
        (it will never be ready), with the end of its log."""
        if not self.alive():
            tail = "\n".join(self.launch_text().splitlines()[-LOG_TAIL_LINES:])
            raise RuntimeError(f"{self.name} exited at start; its log ends:\n{tail}")
        return self.ready_line in self.launch_text()

    def text(self) -> str:
        """The whole log, earlier launches' output included."""
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def launch_text(self) -> str:
        """What the last launch wrote to the log."""
        if not self.log.exists():
            return ""
        with open(self.log, "rb") as log:
            log.seek(self._since)
            return log.read().decode(errors="replace")

    def terminate(self) -> None:
        """SIGTERM the process group (a clean shutdown); see :meth:`wait_stopped`."""
        if self.alive():
            self._signal(signal.SIGTERM)

    def wait_stopped(self, timeout: float) -> None:
        """Wait for the process to exit, SIGKILL its group if it takes longer than
        ``timeout``, then SIGKILL whatever of its group is left (pool children)."""
        if self.process is None or self.process.returncode is not None:
            return
        try:
            self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self._signal(signal.SIGKILL)
            self.process.wait(timeout=10)
        self._signal(signal.SIGKILL)

    def stop(self, timeout: float = 20.0) -> None:
        """A clean shutdown, bounded by ``timeout`` seconds before SIGKILL."""
        self.terminate()
        self.wait_stopped(timeout)

    def kill(self) -> None:
        """SIGKILL the whole process group: no clean shutdown, no acks (a crash)."""
        if self.alive():
            assert self.process is not None
            self._signal(signal.SIGKILL)
            self.process.wait(timeout=10)

    def _signal(self, sig: int) -> None:
        # The group may be gone already (it exited on its own, or with its leader).
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, sig)


def deployment_env(
    redis_url: str, prefix: str, api_url: str, api_key: str, **extra: str
) -> dict[str, str]:
    """The environment of a project process pointed at one deployment: this process's
    own, less any ``REDIS_*``/``BROKER_*``/``WORKERS_*`` setting of the caller's shell, plus
    ``extra``."""
    env = {
        k: v for k, v in os.environ.items() if not k.startswith(("REDIS_", "BROKER_", "WORKERS_"))
    }
    env.update(
        REDIS_URL=redis_url,
        KEY_PREFIX=prefix,
        WORKERS_API_URL=api_url,
        WORKERS_API_KEY=api_key,
        PYTHONUNBUFFERED="1",  # the ready line must reach the log when it is written
    )
    env.update(extra)
    return env


def settings_of(env: dict[str, str]) -> Settings:
    """The settings of the deployment ``env`` describes (its store, broker and secrets)."""
    names = ("REDIS_URL", "BROKER_URL", "KEY_PREFIX", "REDIS_PASSWORD", "BROKER_PASSWORD",
             "REDIS_SENTINEL_PASSWORD", "WORKERS_API_URL", "WORKERS_API_KEY",
             "FILES_DIR", "STORE_CELLS", "FAIR_SHARE_TAG")  # fmt: skip
    return load_settings(**{name.lower(): env[name] for name in names if env.get(name)})


def celery_worker(
    env: dict[str, str],
    log: Path,
    *,
    queues: str = "api,streams",
    name: str = "w1",
    concurrency: int = 8,
    pool: str | None = None,
    cwd: Path | None = None,
) -> Proc:
    """An ``orchestrator worker`` consuming ``queues`` (not started yet)."""
    args = [
        sys.executable, "-m", "orchestrator", "worker",
        "--queues", queues, "--concurrency", str(concurrency), "--hostname", f"{name}@%h",
        "--loglevel", "INFO",
    ]  # fmt: skip
    if pool:
        args += ["--pool", pool]
    return Proc(args, env, log, WORKER_READY, cwd=cwd)


def celery_beat(env: dict[str, str], log: Path, *flags: str) -> Proc:
    """An ``orchestrator beat`` with ``flags`` (not started yet)."""
    args = [sys.executable, "-m", "orchestrator", "beat", "--loglevel", "INFO", *flags]
    return Proc(args, env, log, BEAT_READY)


def gateway_server(env: dict[str, str], log: Path, port: int, workers: int = 1) -> Proc:
    """An ``orchestrator serve`` on 127.0.0.1:``port`` (not started yet)."""
    args = [
        sys.executable, "-m", "orchestrator", "serve", "--port", str(port),
        "--workers", str(workers),
    ]  # fmt: skip
    return Proc(args, env, log, GATEWAY_LISTENING)


def broker_depth(env: dict[str, str], queues: tuple[str, ...] = ("api", "streams")) -> int:
    """Messages waiting on the broker queues (every priority step) of the deployment
    ``env`` describes: a run has settled only once they are all taken."""
    store = store_for(settings_of(env))
    try:
        return sum(store.broker.waiting(queue) for queue in queues)
    finally:
        store.close()
