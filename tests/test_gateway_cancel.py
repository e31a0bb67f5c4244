# ruff: noqa: F811  (the gateway fixtures are imported by name)
"""Cancel over the gateway, single and bulk, over real HTTP against a real gateway
process and Redis: roles, tenants (404 for another tenant's job; bulk kept to its own
jobs), the upstream note, and the error shapes."""

from __future__ import annotations

from orchestrator.facade import Orchestrator
from orchestrator.jobs.lifecycle import UPSTREAM_NOTE
from orchestrator.ops.processes import Proc

from .gateway_support import Gateway, error_of, gateway, gateway_extra, worker  # noqa: F401


def test_cancel_one(gateway: Gateway) -> None:
    api = gateway.client("submit")
    job = api.post("/v1/jobs", json={"input": "stop me"}).json()
    done = api.post(f"/v1/jobs/{job['id']}/cancel", json={"reason": "changed my mind"})
    assert done.status_code == 200, done.text
    body = done.json()
    assert body["job"]["status"] == "cancelled" and body["note"] == UPSTREAM_NOTE
    assert "changed my mind" in body["job"]["error"]
    # Again: the job is returned as it is; no body at all is fine too.
    again = api.post(f"/v1/jobs/{job['id']}/cancel")
    assert again.status_code == 200 and again.json()["job"]["status"] == "cancelled"
    history = [h["status"] for h in api.get(f"/v1/jobs/{job['id']}/history").json()]
    assert history == ["queued", "cancelled"]

    reader = gateway.client("read")
    assert error_of(reader.post(f"/v1/jobs/{job['id']}/cancel"), 403)["field"] == "authorization"
    assert error_of(api.post("/v1/jobs/job_nothere/cancel"), 404)["field"] == "job_id"
    bad = api.post(f"/v1/jobs/{job['id']}/cancel", json={"reason": "x\x00y"})
    assert error_of(bad, 400)["field"] == "reason"
    extra = api.post(f"/v1/jobs/{job['id']}/cancel", json={"why": "x"})
    assert error_of(extra, 422)["type"] == "validation_error"


def test_tenants_cancel_only_their_own(gateway: Gateway) -> None:
    a, b = gateway.client("submit", "acme"), gateway.client("submit", "bolt")
    admin = gateway.client("admin")
    mine = [a.post("/v1/jobs", json={"input": f"a{i}", "tags": {"team": "x"}}).json()
            for i in range(2)]  # fmt: skip
    theirs = b.post("/v1/jobs", json={"input": "b", "tags": {"team": "x"}}).json()
    untagged = admin.post("/v1/jobs", json={"input": "c", "tags": {"team": "x"}}).json()

    assert error_of(a.post(f"/v1/jobs/{theirs['id']}/cancel"), 404)["field"] == "job_id"
    assert admin.get(f"/v1/jobs/{theirs['id']}").json()["status"] == "queued"

    # Bulk by a shared tag: only acme's jobs.
    bulk = a.post("/v1/jobs/cancel", json={"tags": {"team": "x"}, "reason": "bulk"})
    assert bulk.status_code == 200, bulk.text
    assert sorted(bulk.json()["cancelled"]) == sorted(j["id"] for j in mine)
    assert bulk.json()["note"] == UPSTREAM_NOTE
    assert admin.get(f"/v1/jobs/{theirs['id']}").json()["status"] == "queued"
    assert admin.get(f"/v1/jobs/{untagged['id']}").json()["status"] == "queued"
    # Naming another tenant is refused; the tenant's own tag alone is no filter.
    other = a.post("/v1/jobs/cancel", json={"tags": {"tenant": "bolt"}})
    assert error_of(other, 403)["field"] == "tags"
    assert error_of(a.post("/v1/jobs/cancel", json={}), 400)["field"] == "tags"
    assert error_of(a.post("/v1/jobs/cancel", json={"status": "completed"}), 400)["field"] == (
        "status"
    )

    # An untenanted token cancels by status across tenants.
    everyone = admin.post("/v1/jobs/cancel", json={"status": "queued"})
    assert sorted(everyone.json()["cancelled"]) == sorted([theirs["id"], untagged["id"]])


def test_a_job_that_had_ended_is_answered_as_a_read_shows_it(
    gateway: Gateway, worker: Proc, orch: Orchestrator
) -> None:
    """With its turn's cost: the answer said ``"cost": null`` for a costed job."""
    job = orch.submit("done already")
    assert orch.wait(job.id, timeout=60).status == "completed"
    api = gateway.client("submit")
    shown = api.get(f"/v1/jobs/{job.id}").json()
    assert shown["cost"] is not None and shown["cost"]["usage_cost_micro"] > 0
    assert api.post(f"/v1/jobs/{job.id}/cancel").json()["job"] == shown
