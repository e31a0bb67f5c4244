# ruff: noqa: F811  (the gateway fixtures are imported by name)
"""Webhooks end to end over real HTTP: subscriptions made through the gateway, jobs run
by a real Celery worker against the emulator, events delivered by the
``workers.deliver_webhook`` task to a real receiver that verifies each signature with
the ``standardwebhooks`` package and dedupes by ``webhook-id`` across a forced
redelivery (500 first, then 200). And the routes' roles, tenants and refusals."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from orchestrator.store.jobs import RedisStore

from .gateway_support import (  # noqa: F401
    Gateway,
    error_of,
    gateway,
    gateway_extra,
    start_gateway,
    worker,
)
from .webhook_receiver import Receiver
from .webhook_receiver import receiver as receiver  # the fixture


@pytest.fixture
def env(env: dict[str, str]) -> dict[str, str]:
    """The test's processes may post to the loopback receiver, and retry quickly."""
    return {**env, "WEBHOOK_ALLOW_PRIVATE": "true", "WEBHOOK_BACKOFF_SECONDS": "0.3"}


def _ended(api: httpx.Client, job_id: str, timeout: float = 90.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        job = dict(api.get(f"/v1/jobs/{job_id}").json())
        if job["status"] in ("completed", "failed", "cancelled", "expired", "timed_out"):
            return job
        assert time.monotonic() < deadline, job
        time.sleep(0.1)


def test_jobs_end_and_the_receiver_gets_signed_events(
    gateway: Gateway, worker: Any, receiver: Receiver, store: RedisStore
) -> None:
    admin = gateway.client("admin")
    made = admin.post("/v1/webhooks", json={
        "url": receiver.url, "events": ["job.completed", "job.cancelled"],
    })  # fmt: skip
    assert made.status_code == 201, made.text
    secret = made.json()["secret"]
    assert secret.startswith("whsec_")
    assert "secret" not in admin.get("/v1/webhooks").json()[0]

    receiver.script = [500]  # the first delivery fails: it comes again, same webhook-id
    api = gateway.client("submit")
    job = api.post("/v1/jobs", json={"input": "finish me", "tags": {"tenant": "acme"}}).json()
    assert _ended(api, job["id"])["status"] == "completed"
    first, second = receiver.wait_for(2)
    assert first.answered == 500 and second.answered == 200
    assert first.headers["webhook-id"] == second.headers["webhook-id"]
    kept = receiver.deduped(secret)  # every signature verified
    (event,) = kept.values()
    assert event["type"] == "job.completed" and event["data"]["job_id"] == job["id"]
    assert event["data"]["cost_micro"] > 0 and event["data"]["tags"] == {"tenant": "acme"}

    # Cancelled over the gateway: its event follows.
    slow = api.post("/v1/jobs", json={"input": "stop me"}).json()
    cancelled = api.post(f"/v1/jobs/{slow['id']}/cancel", json={"reason": "enough"})
    assert cancelled.json()["job"]["status"] == "cancelled"
    receiver.wait_for(3)
    kept = receiver.deduped(secret)
    types = {e["data"]["job_id"]: e["type"] for e in kept.values()}
    assert types == {job["id"]: "job.completed", slow["id"]: "job.cancelled"}
    # Each task carried the delivery id only (Flower shows no payload, no secret).
    log = worker.text()
    assert secret not in log and "deliver_webhook" in log


def test_webhook_routes_roles_and_tenants(gateway: Gateway, receiver: Receiver) -> None:
    acme, bolt = gateway.client("admin", "acme"), gateway.client("admin", "bolt")
    admin = gateway.client("admin")
    body = {"url": receiver.url, "events": ["job.failed"]}
    mine = acme.post("/v1/webhooks", json=body)
    assert mine.status_code == 201 and mine.json()["tenant"] == "acme"
    everyone = admin.post("/v1/webhooks", json=body).json()
    assert everyone["tenant"] is None
    assert [w["id"] for w in acme.get("/v1/webhooks").json()] == [mine.json()["id"]]
    assert bolt.get("/v1/webhooks").json() == []
    assert len(admin.get("/v1/webhooks").json()) == 2
    other = acme.post("/v1/webhooks", json={**body, "tenant": "bolt"})
    assert error_of(other, 403)["field"] == "tenant"
    gone = bolt.delete(f"/v1/webhooks/{mine.json()['id']}")
    assert error_of(gone, 404)["field"] == "webhook_id"
    assert error_of(acme.delete(f"/v1/webhooks/{everyone['id']}"), 404)
    assert error_of(admin.delete("/v1/webhooks/nope"), 404)
    assert acme.delete(f"/v1/webhooks/{mine.json()['id']}").status_code == 204
    submit = gateway.client("submit")
    assert error_of(submit.post("/v1/webhooks", json=body), 403)["field"] == "authorization"
    bad = admin.post("/v1/webhooks", json={**body, "events": ["job.done"]})
    assert error_of(bad, 400)["field"] == "events"


def test_private_targets_refused_by_default(
    env: dict[str, str], tmp_path: Path, store: RedisStore, receiver: Receiver
) -> None:
    gw = start_gateway(env, tmp_path, store, WEBHOOK_ALLOW_PRIVATE="false")
    try:
        admin = gw.client("admin")
        for url in (receiver.url, "http://169.254.169.254/latest", "http://localhost:8080/"):
            refused = admin.post("/v1/webhooks", json={"url": url, "events": ["job.failed"]})
            assert error_of(refused, 400)["field"] == "url"
        assert admin.get("/v1/webhooks").json() == []
    finally:
        for c in gw.clients:
            c.close()
        gw.proc.stop()
