"""Fixtures for the gateway's tests: a real ``orchestrator serve`` process on a free
port, pointed at the test's Redis prefix and the emulator, and tokens to call it with."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from orchestrator.ops.processes import GATEWAY_READY, Proc, celery_worker, gateway_server
from orchestrator.store.jobs import RedisStore
from orchestrator.store.tokens import TokenStore

from .processes import start_on_a_free_port, wait_for

SIGNING_KEY = "test-signing-key-" + secrets.token_hex(16)


@dataclass
class Gateway:
    url: str
    proc: Proc
    tokens: TokenStore
    clients: list[httpx.Client] = field(default_factory=list)

    def token(self, role: str = "admin", tenant: str | None = None) -> str:
        token, _ = self.tokens.create(role, tenant, "test")
        return token

    def client(self, role: str = "admin", tenant: str | None = None) -> httpx.Client:
        """An httpx client with a fresh token of ``role`` (and ``tenant``)."""
        headers = {"Authorization": f"Bearer {self.token(role, tenant)}"}
        c = httpx.Client(base_url=self.url, headers=headers, timeout=30)
        self.clients.append(c)
        return c


def start_gateway(
    env: dict[str, str], tmp_path: Path, store: RedisStore, workers: int = 1, **extra: str
) -> Gateway:
    genv = {"GATEWAY_SIGNING_KEY": SIGNING_KEY, **env, **extra}
    proc, port = start_on_a_free_port(
        lambda port: gateway_server(genv, tmp_path / f"gateway-{port}.log", port, workers)
    )
    if workers > 1:  # every process has said it is up, not only the first
        wait_for(
            lambda: proc.text().count(GATEWAY_READY) >= workers, 60, f"{workers} gateway processes"
        )
    return Gateway(f"http://127.0.0.1:{port}", proc, TokenStore(store))


@pytest.fixture
def gateway_extra() -> dict[str, str]:
    """Settings of the test's gateway beyond the defaults (override in a module)."""
    return {}


@pytest.fixture
def gateway(
    env: dict[str, str], tmp_path: Path, store: RedisStore, gateway_extra: dict[str, str]
) -> Iterator[Gateway]:
    gw = start_gateway(env, tmp_path, store, **gateway_extra)
    try:
        yield gw
    finally:
        for c in gw.clients:
            c.close()
        gw.proc.stop()


@pytest.fixture
def worker(env: dict[str, str], tmp_path: Path) -> Iterator[Proc]:
    """A real Celery worker on every queue."""
    proc = celery_worker(env, tmp_path / "worker.log").start(timeout=90)
    try:
        yield proc
    finally:
        proc.stop()


def error_of(response: httpx.Response, status: int) -> dict[str, Any]:
    """The one error shape, with the expected status."""
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"type", "field", "message"}
    assert "Traceback" not in response.text
    return dict(body["error"])
