"""The bad input corpus's world: a real Orchestrator on the test's Redis prefix whose
fixture checks, at the end, that nothing was written or enqueued; and the CLI as a real
process."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import redis

from orchestrator.facade import Orchestrator
from orchestrator.settings import load_settings

from .conftest import Emulator

ROOT = Path(__file__).resolve().parents[1]


@dataclass
class World:
    orch: Orchestrator
    r: Any
    prefix: str
    env: dict[str, str]

    def state(self) -> tuple[int, list[str]]:
        """The broker's ``api`` queue length and every key under our prefix."""
        depth = self.r.llen(self.orch.store.keys.broker_queue("api"))
        return int(depth), sorted(self.r.scan_iter(f"{self.prefix}:*"))


@pytest.fixture
def world(
    redis_url: str,
    key_prefix: str,
    emulator: Emulator,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> Iterator[World]:
    env = {
        "REDIS_URL": redis_url,
        "KEY_PREFIX": key_prefix,
        "MAX_INPUT_CHARS": "1000",
        "WORKERS_API_URL": emulator.url,
        "WORKERS_API_KEY": emulator.api_key,
    }
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.chdir(tmp_path)  # no .env here
    r = redis.Redis.from_url(redis_url, decode_responses=True)
    with Orchestrator(load_settings()) as orch:
        world = World(orch, r, key_prefix, env)
        before = world.state()
        yield world
        assert world.state() == before, "something was written or enqueued"
    r.close()


def orchestrator(argv: list[str], extra: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """``python -m orchestrator ARGV`` with our environment plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("REDIS_", "WORKERS_"))}
    env.update(extra, PYTHONPATH=str(ROOT))
    return subprocess.run([sys.executable, "-m", "orchestrator", *argv], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=60)  # fmt: skip
