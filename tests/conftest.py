"""Shared fixtures: a real Redis server and the emulator over real HTTP on 127.0.0.1.

With ``REDIS_URL`` set, tests use that server (each test session under its own key
prefix); otherwise they start their own ``redis-server`` on a free port.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from orchestrator.emulator import EmulatorConfig, EmulatorServer
from orchestrator.facade import Orchestrator
from orchestrator.ops.redis_server import RedisServer
from orchestrator.settings import load_settings
from orchestrator.store.jobs import RedisStore, connect

API_KEY = "sk-test-" + uuid.uuid4().hex


class Emulator:
    """A running emulator plus helpers for its control routes."""

    def __init__(self, server: EmulatorServer) -> None:
        self.server = server
        self.url: str = server.url
        self.api_key: str = server.api_key
        self.http = httpx.Client(
            base_url=self.url, headers={"Authorization": f"Bearer {self.api_key}"}, timeout=10
        )

    def faults(self, **changes: Any) -> dict[str, Any]:
        response = self.http.post("/_emulator/faults", json=changes)
        response.raise_for_status()
        return dict(response.json())

    def configure(self, **changes: Any) -> None:
        self.http.post("/_emulator/config", json=changes).raise_for_status()

    def ledger(self) -> dict[str, Any]:
        response = self.http.get("/_emulator/ledger")
        response.raise_for_status()
        return dict(response.json())

    def reset(self) -> None:
        self.http.post("/_emulator/reset").raise_for_status()


@pytest.fixture(scope="session")
def emulator_server() -> Iterator[EmulatorServer]:
    config = EmulatorConfig(turn_seconds=0.2, events_per_turn=5)
    with EmulatorServer(api_key=API_KEY, config=config) as server:
        yield server


@pytest.fixture
def emulator(emulator_server: EmulatorServer) -> Iterator[Emulator]:
    """The session's emulator, reset to no faults and fast turns for each test."""
    emu = Emulator(emulator_server)
    emu.reset()
    emu.faults(
        rate_429=0, rate_500=0, rate_503=0, rate_lost_response=0, rate_slow=0, rate_cut_stream=0
    )
    emu.configure(turn_seconds=0.2, events_per_turn=5)
    yield emu
    emu.http.close()


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    """A real Redis server: ``REDIS_URL`` if set, else a private one on a free port."""
    url = os.environ.get("REDIS_URL")
    if url:
        yield url
        return
    with RedisServer() as server:
        yield server.url


@pytest.fixture
def env(redis_url: str, key_prefix: str, emulator: Emulator, tmp_path: Path) -> dict[str, str]:
    """Environment for real worker/beat processes of one test: its own key prefix, the
    emulator, short leases and visibility timeout so recovery tests finish quickly."""
    from .processes import stack_env

    return stack_env(
        redis_url, key_prefix, emulator.url, emulator.api_key,
        FILES_DIR=str(tmp_path / "files"), FOLLOW_LEASE_SECONDS="3", VISIBILITY_TIMEOUT="10",
    )  # fmt: skip


@pytest.fixture
def orch(env: dict[str, str]) -> Iterator[Orchestrator]:
    """The facade, configured like the processes of :func:`env`."""
    settings = load_settings(
        redis_url=env["REDIS_URL"], key_prefix=env["KEY_PREFIX"],
        workers_api_url=env["WORKERS_API_URL"], workers_api_key=env["WORKERS_API_KEY"],
        files_dir=env["FILES_DIR"],
    )  # fmt: skip
    with Orchestrator(settings) as o:
        yield o


@pytest.fixture
def store(redis_url: str, key_prefix: str) -> Iterator[RedisStore]:
    """The store under this test's own prefix."""
    s = RedisStore(connect(redis_url), key_prefix)
    yield s
    s.r.close()


@pytest.fixture
def key_prefix() -> str:
    """A fresh key prefix per test, so tests sharing one Redis never see each other."""
    return "t" + uuid.uuid4().hex[:10]
