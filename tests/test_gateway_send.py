"""The first task a gateway sends (``GATEWAY_SEND=direct``; by default the outbox relay
sends it): published with Flower's task-sent event, as every sender's, unless
``GATEWAY_TASK_SENT_EVENTS=false`` drops it (one publish less)."""

from __future__ import annotations

import time
from pathlib import Path

from orchestrator.store.jobs import RedisStore

from .gateway_support import start_gateway


def _sent_events(env: dict[str, str], tmp_path: Path, store: RedisStore, **extra: str) -> int:
    """task-sent events published while one job is submitted over HTTP and its first
    task sent (the outbox entry goes once ``send_task`` has returned)."""
    gw = start_gateway(env, tmp_path, store, GATEWAY_SEND="direct", **extra)
    events = store.r.pubsub()
    try:
        events.psubscribe("*celeryev*")
        assert events.get_message(timeout=5)["type"] == "psubscribe"
        job = gw.client("submit").post("/v1/jobs", json={"input": "hello"})
        assert job.status_code == 202, job.text
        deadline = time.monotonic() + 30
        while job.json()["id"] in store.unsent(-60_000):
            assert time.monotonic() < deadline, "the first task was never sent"
            time.sleep(0.05)
        seen = 0
        while (message := events.get_message(timeout=0.5)) is not None:
            seen += "task.sent" in str(message["channel"])
        return seen
    finally:
        events.close()
        for c in gw.clients:
            c.close()
        gw.proc.stop()


def test_the_gateway_sends_task_sent_unless_told_not_to(
    env: dict[str, str], tmp_path: Path, store: RedisStore
) -> None:
    assert _sent_events(env, tmp_path, store) == 1
    assert _sent_events(env, tmp_path, store, GATEWAY_TASK_SENT_EVENTS="false") == 0
