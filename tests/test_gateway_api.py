# ruff: noqa: F811  (the gateway fixtures are imported by name)
"""The gateway's REST API over real HTTP (httpx and curl) against a real ``orchestrator
serve`` process, real Redis and the emulator: jobs, listing, continues, files, schedules
and the OpenAPI document. Errors, limits, tenants, roles and tokens:
tests/test_gateway_access.py."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from orchestrator.ops.redis_server import free_port
from orchestrator.store.jobs import RedisStore
from orchestrator.wire.models import Worker

from .gateway_support import Gateway, error_of, gateway, gateway_extra, start_gateway  # noqa: F401


def test_submit_get_history_and_idempotency(gateway: Gateway) -> None:
    api = gateway.client("submit")
    body = {"input": "Summarise", "budget": "low", "tags": {"team": "a"}}
    made = api.post("/v1/jobs", json=body, headers={"Idempotency-Key": "k-1"})
    assert made.status_code == 202, made.text
    job = made.json()
    assert job["status"] == "queued" and job["tags"] == {"team": "a"} and job["budget"] == "low"
    again = api.post("/v1/jobs", json=body, headers={"Idempotency-Key": "k-1"})
    assert again.status_code == 202 and again.json()["id"] == job["id"]
    other = api.post("/v1/jobs", json={"input": "Else"}, headers={"Idempotency-Key": "k-1"})
    assert error_of(other, 409)["field"] == "idempotency_key"
    got = api.get(f"/v1/jobs/{job['id']}")
    assert got.status_code == 200 and got.json()["id"] == job["id"]
    history = api.get(f"/v1/jobs/{job['id']}/history").json()
    assert [h["status"] for h in history] == ["queued"]
    assert api.get(f"/v1/jobs/{job['id']}/files").json() == []


def test_listing_filters_and_cursor_pages(gateway: Gateway, store: RedisStore) -> None:
    api = gateway.client("submit")
    ids = []
    for i in range(7):
        tags = {"team": "a" if i % 2 == 0 else "b"}
        ids.append(api.post("/v1/jobs", json={"input": f"job {i}", "tags": tags}).json()["id"])
    # Newest first; jobs of one millisecond by id, descending (the index's order).
    created = {i: store.get_job(i).created_at for i in ids}  # type: ignore[union-attr]
    newest_first = sorted(ids, key=lambda i: (created[i], i), reverse=True)

    seen: list[str] = []
    cursor = None
    for _ in range(20):  # bounded: 7 jobs at 2 a page
        params: dict[str, Any] = {"limit": 2}
        if cursor:
            params["cursor"] = cursor
        page = api.get("/v1/jobs", params=params).json()
        seen += [j["id"] for j in page["jobs"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == newest_first  # every job once, in order: no gap, no repeat

    team_a = api.get("/v1/jobs", params={"tag": "team=a"}).json()
    assert [j["id"] for j in team_a["jobs"]] == [i for i in newest_first if i in ids[::2]]
    assert api.get("/v1/jobs", params={"status": "completed"}).json()["jobs"] == []
    queued = api.get("/v1/jobs", params={"status": "queued", "tag": "team=b"}).json()["jobs"]
    assert {j["id"] for j in queued} == set(ids[1::2])
    at = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(created[ids[3]] / 1000))
    ms = f"{created[ids[3]] % 1000:03d}"
    after = api.get("/v1/jobs", params={"created_after": f"{at}.{ms}Z"}).json()["jobs"]
    assert set(ids[3:]) <= {j["id"] for j in after}
    assert error_of(api.get("/v1/jobs", params={"cursor": "nope"}), 400)["field"] == "cursor"
    assert error_of(api.get("/v1/jobs", params={"tag": "bad"}), 400)["field"] == "tag"
    assert error_of(api.get("/v1/jobs", params={"limit": 0}), 422)["field"] == "limit"

    # A job whose record expired (retention) is skipped and leaves the index.
    store.r.delete(store.keys.job(ids[6]))
    rest = api.get("/v1/jobs").json()["jobs"]
    assert ids[6] not in [j["id"] for j in rest] and len(rest) == 6
    assert store.r.zscore(store.keys.jobs, ids[6]) is None


def test_status_filter_pages_are_bounded_and_go_on(
    env: dict[str, str], tmp_path: Path, store: RedisStore
) -> None:
    gw = start_gateway(env, tmp_path, store, GATEWAY_LIST_SCAN="10")
    try:
        api = gw.client("submit")
        wanted = api.post("/v1/jobs", json={"input": "the old one", "tags": {"k": "x"}}).json()
        for i in range(25):
            api.post("/v1/jobs", json={"input": f"filler {i}"})
        found: list[str] = []
        cursor = None
        pages = 0
        while pages < 10:
            params: dict[str, Any] = {"status": "queued", "limit": 50}
            if cursor:
                params["cursor"] = cursor
            page = api.get("/v1/jobs", params=params).json()
            pages += 1
            assert len(page["jobs"]) <= 10  # at most GATEWAY_LIST_SCAN examined per page
            found += [j["id"] for j in page["jobs"]]
            cursor = page["next_cursor"]
            if cursor is None:
                break
        assert pages >= 3 and wanted["id"] in found and len(found) == 26
    finally:
        gw.proc.stop()


def test_continue_of_an_unknown_or_malformed_worker_is_refused_up_front(
    gateway: Gateway, store: RedisStore
) -> None:
    api = gateway.client("submit")
    waiting = store.broker.waiting("api")

    def go(worker: str) -> httpx.Response:
        return api.post("/v1/jobs/continue", json={"worker": worker, "input": "more"})

    unknown = error_of(go("wrk_nosuchworker"), 404)
    assert unknown["field"] == "worker_id" and "no worker wrk_nosuchworker" in unknown["message"]
    assert error_of(go("wrk/../../x"), 400)["field"] == "worker_id"
    assert error_of(go("wrk_1\n"), 400)["field"] == "worker_id"
    assert error_of(go("job_unknown"), 404)["field"] == "worker"
    assert store.broker.waiting("api") == waiting and store.recent_jobs() == []


def test_a_continue_carries_the_earlier_jobs_tier_and_tags(
    gateway: Gateway, store: RedisStore
) -> None:
    acme, admin = gateway.client("submit", tenant="acme"), gateway.client("submit")
    first = acme.post("/v1/jobs", json={"input": "first", "budget": "high",
                                        "tags": {"team": "x"}}).json()  # fmt: skip
    done = {"id": "wrk_carry", "status": "completed", "running": False}
    assert store.set_submitted(store.require_job(first["id"]), Worker.model_validate(done))

    def go(client: httpx.Client, key: str | None = None, **body: Any) -> httpx.Response:
        headers = {"Idempotency-Key": key} if key else {}
        body = {"worker": first["id"], "input": "more", **body}
        return client.post("/v1/jobs/continue", json=body, headers=headers)

    for client in (acme, admin):
        made = go(client)
        assert made.status_code == 202, made.text
        job = made.json()
        assert (job["budget"], job["tags"]) == ("high", {"tenant": "acme", "team": "x"})
    by_worker = go(admin, worker="wrk_carry", budget="low", tags={"team": "y"}).json()
    assert (by_worker["budget"], by_worker["tags"]) == ("low", {"tenant": "acme", "team": "y"})
    # A repeat under one key is the same job; naming another tier or tag is a conflict.
    once = go(acme, "carry-1").json()
    assert go(acme, "carry-1").json()["id"] == once["id"]
    assert go(acme, "carry-1", budget="high", tags={"team": "x"}).json()["id"] == once["id"]
    assert error_of(go(acme, "carry-1", budget="low"), 409)["field"] == "idempotency_key"
    assert error_of(go(acme, "carry-1", tags={"team": "z"}), 409)["field"] == "idempotency_key"


def test_curl_submit_get_and_list(gateway: Gateway, tmp_path: Path) -> None:
    header = tmp_path / "auth.hdr"
    header.write_text(f"Authorization: Bearer {gateway.token('submit')}\n")

    def curl(*args: str) -> Any:
        done = subprocess.run(["curl", "-sS", "--fail-with-body", "-H", f"@{header}", *args],
                              capture_output=True, text=True, timeout=30)  # fmt: skip
        assert done.returncode == 0, done.stdout + done.stderr
        return json.loads(done.stdout)

    body = '{"input": "from curl", "tags": {"via": "curl"}}'
    job = curl("-H", "Content-Type: application/json", "-H", "Idempotency-Key: curl-1",
               "-d", body, f"{gateway.url}/v1/jobs")  # fmt: skip
    assert job["status"] == "queued"
    assert curl(f"{gateway.url}/v1/jobs/{job['id']}")["input"] == "from curl"
    listed = curl(f"{gateway.url}/v1/jobs?tag=via=curl&limit=5")
    assert [j["id"] for j in listed["jobs"]] == [job["id"]]


def test_file_download_is_streamed_and_path_safe(
    gateway: Gateway, store: RedisStore, env: dict[str, str], tmp_path: Path
) -> None:
    api = gateway.client("read")
    job = gateway.client("submit").post("/v1/jobs", json={"input": "files"}).json()
    files_dir = Path(env["FILES_DIR"]) / job["id"] / "out"
    files_dir.mkdir(parents=True)
    (files_dir / "report.txt").write_bytes(b"hello file\n" * 1000)
    outside = tmp_path / "outside.txt"
    outside.write_text("not yours")
    report = {"path": str(files_dir / "report.txt"), "size": 11000, "sha256": "x"}
    store.record_file(job["id"], "out/report.txt", report)
    store.record_file(job["id"], "evil.txt", {"path": str(outside), "size": 9, "sha256": "y"})
    index = api.get(f"/v1/jobs/{job['id']}/files").json()
    assert {f["name"] for f in index} == {"out/report.txt", "evil.txt"}
    assert all("path" not in f for f in index)  # no server paths leak
    got = api.get(f"/v1/jobs/{job['id']}/files/out/report.txt")
    assert got.status_code == 200 and got.content == b"hello file\n" * 1000
    assert error_of(api.get(f"/v1/jobs/{job['id']}/files/evil.txt"), 404)
    assert error_of(api.get(f"/v1/jobs/{job['id']}/files/..%2F..%2Fetc%2Fpasswd"), 404)


def test_openapi_document_has_every_route_and_its_errors(gateway: Gateway) -> None:
    doc = httpx.get(f"{gateway.url}/openapi.json").json()
    from orchestrator.gateway import events, jobs, money, schedules

    routes = [(r.path, m) for module in (jobs, events, schedules, money)
              for r in module.router.routes for m in r.methods]  # type: ignore[attr-defined]  # fmt: skip
    assert len(routes) >= 25
    for path, method in routes:
        op = doc["paths"][path.replace(":path}", "}")][method.lower()]
        codes = set(op["responses"])
        assert {"400", "404", "500"} <= codes, (path, method)
        if not path.startswith("/v1/links"):
            assert {"401", "403", "415", "422", "429", "503"} <= codes, (path, method)
        ref = op["responses"]["404"]["content"]["application/json"]["schema"]["$ref"]
        assert ref.endswith("/ErrorBody")
    assert {"ErrorBody", "ErrorDetail", "JobOut", "JobPage"} <= set(doc["components"]["schemas"])
    assert "swagger" in httpx.get(f"{gateway.url}/docs").text.lower()


@pytest.mark.parametrize("when", [
    {"type": "delayed", "delayInSeconds": 3600},
    {"type": "cron", "cron": "0 7 * * *"},
    {"type": "interval", "intervalSeconds": 600},
    {"type": "scheduled", "date": "2099-01-01T00:00:00Z"},
])  # fmt: skip
def test_schedules_of_every_kind(gateway: Gateway, when: dict[str, Any]) -> None:
    admin, reader = gateway.client("admin"), gateway.client("read")
    made = admin.post("/v1/schedules", json={"input": "digest", "when": when, "budget": "low"})
    assert made.status_code == 201, made.text
    sid = made.json()["id"]
    assert sid in [s["id"] for s in reader.get("/v1/schedules").json()]
    assert reader.get(f"/v1/schedules/{sid}").json()["id"] == sid
    assert reader.get(f"/v1/schedules/{sid}/describe").json()["type"] == when["type"]
    assert reader.get(f"/v1/schedules/{sid}/history").json() == []
    assert error_of(reader.post(f"/v1/schedules/{sid}/pause"), 403)
    assert admin.post(f"/v1/schedules/{sid}/pause").json() == {"changed": True}
    assert admin.post(f"/v1/schedules/{sid}/resume").json() == {"changed": True}
    assert admin.post(f"/v1/schedules/{sid}/trigger").json()["slot"] > 0
    assert admin.post(f"/v1/schedules/{sid}/cancel").json() == {"changed": True}
    assert error_of(admin.post(f"/v1/schedules/{sid}/trigger"), 409)
    bad = admin.post("/v1/schedules", json={"input": "x", "when": {"type": "cron", "cron": "nope"}})
    assert error_of(bad, 400)["field"].startswith("when")


@pytest.mark.parametrize(("when", "field"), [
    ({"type": "interval", "intervalSeconds": True}, "when.interval_seconds"),  # not 1 s
    ({"type": "interval", "intervalSeconds": "60"}, "when.interval_seconds"),
    ({"type": "interval", "intervalSeconds": 60, "jitter": 5}, "when.jitter"),
    ({"type": "scheduled", "at": "2099-01-01T00:00:00Z"}, "when.date"),
])  # fmt: skip
def test_a_schedules_when_takes_integer_seconds_and_its_own_keys_only(
    gateway: Gateway, when: dict[str, Any], field: str
) -> None:
    admin = gateway.client("admin")
    bad = admin.post("/v1/schedules", json={"input": "x", "when": when})
    assert error_of(bad, 400)["field"] == field
    assert admin.get("/v1/schedules").json() == []


def test_a_schedules_tags_round_trip_and_a_tenants_worker_lends_its_own(
    gateway: Gateway, store: RedisStore
) -> None:
    admin, reader = gateway.client("admin"), gateway.client("read")
    every = {"type": "interval", "intervalSeconds": 600}
    made = admin.post("/v1/schedules", json={"input": "d", "when": every, "tags": {"team": "x"}})
    assert made.status_code == 201 and made.json()["tags"] == {"team": "x"}, made.text
    sid = made.json()["id"]
    assert reader.get(f"/v1/schedules/{sid}").json()["tags"] == {"team": "x"}
    assert reader.get(f"/v1/schedules/{sid}/describe").json()["tags"] == {"team": "x"}
    # Bad tags: refused by name, nothing stored.
    before = reader.get("/v1/schedules").json()
    bad = admin.post("/v1/schedules", json={"input": "d", "when": every, "tags": {"Team": "x"}})
    assert error_of(bad, 400)["field"] == "tags" and reader.get("/v1/schedules").json() == before
    # On a tenant's worker, without tags: the tenant's tier and tags; schedules stay admin's.
    acme = gateway.client("admin", tenant="acme")
    first = acme.post("/v1/jobs", json={"input": "first", "budget": "high"}).json()
    done = {"id": "wrk_sched_gw", "status": "completed", "running": False}
    assert store.set_submitted(store.require_job(first["id"]), Worker.model_validate(done))
    body = {"worker": first["id"], "input": "more", "when": every}
    assert error_of(acme.post("/v1/schedules", json=body), 403)
    carried = admin.post("/v1/schedules", json=body).json()
    assert (carried["budget"], carried["tags"]) == ("high", {"tenant": "acme"})


def test_submit_answers_once_stored_and_a_failed_send_leaves_the_job_to_the_sweep(
    env: dict[str, str], tmp_path: Path, store: RedisStore
) -> None:
    """Submit answers once the job is stored; its first task is sent after (here by the
    gateway itself, ``GATEWAY_SEND=direct``). With the
    broker away the answer is still 202 and the job stays in the outbox (the re-send
    sweep's to send), the failure logged by its type, never its URL."""
    dead = f"redis://:hunter2-secret@127.0.0.1:{free_port()}/0"
    gw = start_gateway(env, tmp_path, store, BROKER_URL=dead, GATEWAY_SEND="direct")
    try:
        made = gw.client("submit").post("/v1/jobs", json={"input": "no broker"})
        assert made.status_code == 202, made.text
        job_id = made.json()["id"]
        deadline = time.monotonic() + 60
        while "first task not sent" not in gw.proc.text():
            assert time.monotonic() < deadline, gw.proc.text()
            time.sleep(0.1)
        assert job_id in store.unsent(0)
        assert store.get_job(job_id).status == "queued"  # type: ignore[union-attr]
        assert "hunter2-secret" not in gw.proc.text()
    finally:
        gw.proc.stop()


def test_submit_takes_the_jobs_own_limits_checked_as_in_python(
    gateway: Gateway, store: RedisStore
) -> None:
    """queue_ttl, idle_timeout and deadline over HTTP: stored on the job and shown; left
    out, the settings' defaults; an idempotent repeat matches on them; a limit that is
    not a JSON number in bounds is refused naming it, and nothing is written."""
    api = gateway.client("submit")
    body = {"input": "Long research", "queue_ttl": 600, "idle_timeout": 300, "deadline": 3600.5}
    made = api.post("/v1/jobs", json=body, headers={"Idempotency-Key": "lim-1"})
    assert made.status_code == 202, made.text
    shown = made.json()
    assert (shown["queue_ttl"], shown["idle_timeout"], shown["deadline"]) == (600, 300, 3600.5)
    job = store.get_job(shown["id"])
    assert job is not None and (job.queue_ttl, job.idle_timeout, job.deadline) == (600, 300, 3600.5)
    again = api.post("/v1/jobs", json=body, headers={"Idempotency-Key": "lim-1"})
    assert again.status_code == 202 and again.json()["id"] == shown["id"]
    shorter = {**body, "deadline": 60}
    other = api.post("/v1/jobs", json=shorter, headers={"Idempotency-Key": "lim-1"})
    assert error_of(other, 409)["field"] == "idempotency_key"

    plain = api.post("/v1/jobs", json={"input": "x"}, headers={"Idempotency-Key": "lim-2"})
    defaults = plain.json()
    stored = store.get_job(defaults["id"])
    assert stored is not None and stored.deadline is not None  # the setting's (a day)
    assert (defaults["queue_ttl"], defaults["deadline"]) == (stored.queue_ttl, stored.deadline)
    repeat = api.post("/v1/jobs", json={"input": "x"}, headers={"Idempotency-Key": "lim-2"})
    assert repeat.status_code == 202 and repeat.json()["id"] == defaults["id"]

    before = store.job_states()
    for field, value in (("deadline", "3600"), ("queue_ttl", True), ("idle_timeout", -1),
                         ("deadline", 0), ("queue_ttl", 10**12), ("idle_timeout", [5])):
        refused = api.post("/v1/jobs", json={"input": "x", field: value})
        assert refused.status_code in (400, 422), (field, value, refused.text)
        assert error_of(refused, refused.status_code)["field"] == field, (field, value)
    assert store.job_states() == before  # nothing stored
