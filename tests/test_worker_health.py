"""Worker heartbeat: a task each worker sends itself, so a fresh beat proves consumption."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import pytest
import redis

from orchestrator.store.keys import Keys

from .conftest import Emulator
from .processes import celery_worker, stack_env, wait_for

pytestmark = pytest.mark.slow


def health(env: dict[str, str], *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "orchestrator", "health", *extra],
        env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip


def test_heartbeat_proves_the_worker_consumes(
    redis_url: str, key_prefix: str, emulator: Emulator, tmp_path: Path
) -> None:
    env = stack_env(redis_url, key_prefix, emulator.url, emulator.api_key)
    node = f"hb{key_prefix}@{socket.gethostname()}"
    r = redis.Redis.from_url(redis_url, decode_responses=True)
    key = Keys(key_prefix).heartbeat(node)
    worker = celery_worker(env, tmp_path / "w.log", name=f"hb{key_prefix}").start()
    try:
        wait_for(lambda: r.get(key), 30, "the first heartbeat")
        ok = health(env, "--max-age", "30", "--name", node)
        assert ok.returncode == 0, ok.stdout + ok.stderr
    finally:
        worker.kill()
    # A silent (dead) worker: its heartbeat ages past --max-age and health fails.
    r.set(key, 1)  # epoch ms of long ago
    stale = health(env, "--max-age", "30", "--name", node)
    assert stale.returncode != 0 and "Traceback" not in stale.stderr
    missing = health(env, "--max-age", "30", "--name", "nobody@nowhere")
    assert missing.returncode != 0
