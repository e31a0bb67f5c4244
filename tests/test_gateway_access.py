# ruff: noqa: F811  (the gateway fixtures are imported by name)
"""The gateway's refusals over real HTTP against a real ``orchestrator serve`` process:
the one error shape, the rate limit, an unavailable store, tenant isolation, roles, and
the tokens CLI that makes them."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from orchestrator.gateway.app import create_app
from orchestrator.ops.redis_server import free_port
from orchestrator.settings import load_settings
from orchestrator.store.jobs import RedisStore

from .gateway_support import Gateway, error_of, gateway, gateway_extra, start_gateway  # noqa: F401
from .processes import wait_for


@pytest.mark.parametrize("content_type", [
    "text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x", None,
])  # fmt: skip
def test_a_body_that_is_not_sent_as_json_is_a_415_and_writes_nothing(
    gateway: Gateway, content_type: str | None
) -> None:
    """It was a 422 "Input should be a valid dictionary", naming no header."""
    admin = gateway.client("admin")
    headers = {} if content_type is None else {"Content-Type": content_type}
    answer = admin.post("/v1/jobs", content=b'{"input": "x"}', headers=headers)
    refused = error_of(answer, 415)
    assert refused["type"] == "unsupported_media_type" and refused["field"] == "content-type"
    assert admin.get("/v1/jobs").json()["jobs"] == []
    # JSON by any of its names passes; a POST without a body needs no content type.
    for ok in ("application/json", "application/json; charset=utf-8", "application/merge+json"):
        made = admin.post("/v1/jobs", content=b'{"input": "x"}', headers={"Content-Type": ok})
        assert made.status_code == 202, (ok, made.text)
    job_id = admin.get("/v1/jobs").json()["jobs"][0]["id"]
    assert admin.post(f"/v1/jobs/{job_id}/cancel").status_code == 200


def test_a_caller_without_a_valid_token_is_refused_before_its_body_is_looked_at(
    gateway: Gateway,
) -> None:
    """A 401 comes first: before the 413 for a body too large, the 415 for one not sent
    as JSON, the 422 for JSON that does not parse or a field out of place. Those told a
    stranger the API's rules (and the 413 had the gateway size the body)."""
    url = f"{gateway.url}/v1/jobs"
    nobody: dict[str, str] = {}
    wrong = {"Authorization": "Bearer orch_nope"}
    basic = {"Authorization": "Basic dXNlcjpwYXNz"}
    for who in (nobody, wrong, basic):
        for content, content_type in (
            (b"x" * (2**20 + 5), "application/json"),  # over the default body limit
            (b'{"input": "x"}', "text/plain"),
            (b'{"input": ', "application/json"),
            (b'{"input": "x", "budget": "huge"}', "application/json"),
        ):
            answer = httpx.post(url, content=content, headers={**who, "Content-Type": content_type})
            refused = error_of(answer, 401)
            assert refused["field"] == "authorization", (who, content[:20])
            assert answer.headers["WWW-Authenticate"] == "Bearer"
    # Unknown routes under /v1 too: a stranger learns nothing of which exist.
    assert error_of(httpx.get(f"{gateway.url}/v1/nothing-here"), 401)
    # With a token, each gets its own answer, as before.
    admin = gateway.client("admin")
    assert error_of(admin.post("/v1/jobs", content=b"x" * (2**20 + 5)), 413)
    assert error_of(admin.post("/v1/jobs", content=b'{"input": ', headers={
        "Content-Type": "application/json"}), 422)["field"] == "body"  # fmt: skip
    assert error_of(admin.get("/v1/nothing-here"), 404)
    assert admin.get("/v1/jobs").json()["jobs"] == []  # nothing was written


def test_error_shapes(gateway: Gateway) -> None:
    url = gateway.url
    assert error_of(httpx.get(f"{url}/v1/jobs"), 401)["field"] == "authorization"
    bad = httpx.get(f"{url}/v1/jobs", headers={"Authorization": "Bearer orch_nope"})
    assert error_of(bad, 401)["type"] == "unauthorized"
    reader = gateway.client("read")
    assert error_of(reader.post("/v1/jobs", json={"input": "x"}), 403)["type"] == "forbidden"
    admin = gateway.client("admin")
    assert error_of(admin.get("/v1/jobs/job_unknown"), 404)["field"] == "job_id"
    assert error_of(admin.get("/v1/jobs/not-a-job"), 404)["type"] == "not_found"
    blank = error_of(admin.post("/v1/jobs", json={"input": "  "}), 400)
    assert blank["field"] == "input" and blank["type"] == "invalid_request"
    assert error_of(admin.post("/v1/jobs", json={"input": "x", "tags": {"Bad": "v"}}), 400)
    surrogate = admin.post("/v1/jobs", content=b'{"input": "\\ud800 lone"}',
                           headers={"Content-Type": "application/json"})  # fmt: skip
    assert error_of(surrogate, 400)["field"] == "input"
    missing = error_of(admin.post("/v1/jobs", json={"budget": "low"}), 422)
    assert missing["field"] == "input" and missing["type"] == "validation_error"
    assert error_of(admin.post("/v1/jobs", json={"input": "x", "budget": "huge"}), 422)
    not_json = error_of(admin.post("/v1/jobs", content=b"[1,2",
                                   headers={"Content-Type": "application/json"}), 422)  # fmt: skip
    assert not_json["field"] == "body" and "not valid JSON" in not_json["message"]
    big = admin.post("/v1/jobs", json={"input": "x" * (2 * 2**20)})
    assert error_of(big, 413)["type"] == "too_large"
    assert error_of(admin.get("/v1/costs", params={"by": "planet"}), 422)["field"] == "by"
    # Wrong JSON types are refused as the Python facade refuses them, never coerced.
    coerced = admin.post("/v1/jobs", json={"input": "x", "fetch_files": "no"})
    assert error_of(coerced, 422)["field"] == "fetch_files"
    text_limit = admin.put("/v1/limits", json={"key": "budget:low", "limit": "5"})
    assert error_of(text_limit, 422)["field"] == "limit"
    number_cap = error_of(admin.put("/v1/budgets", json={"scope": "global", "limit_usd": 5.5}), 422)
    assert number_cap["field"] == "limit_usd" and '"12.50"' in number_cap["message"]
    # since/until filter days only: refused rather than silently ignored for a tag.
    by_tag = admin.get("/v1/costs", params={"by": "tag", "since": "2026-01-01"})
    assert error_of(by_tag, 400)["field"] == "since"
    # A misspelt filter is refused, not ignored (which would list every job).
    typo = error_of(admin.get("/v1/jobs", params={"tags": "tenant=acme"}), 422)
    assert typo["field"] == "tags" and typo["message"].endswith("status, tag)")
    assert error_of(admin.get("/v1/me", params={"x": "1"}), 422)["field"] == "x"
    assert admin.get("/", params={"utm_source": "mail"}).status_code == 200  # the console
    since = admin.get("/v1/jobs/job_unknown/events", params={"since": "3"})
    assert error_of(since, 422)["field"] == "since"
    assert admin.get("/v1/jobs", params={"tag": "tenant=acme", "limit": 5}).status_code == 200
    # A single-valued parameter given twice is refused (the last one was taken); a list
    # parameter repeats.
    twice = admin.get("/v1/jobs", params=[("limit", "500"), ("limit", "1")])
    assert error_of(twice, 422)["field"] == "limit"
    both = [("tag", "tenant=acme"), ("tag", "team=x")]
    assert admin.get("/v1/jobs", params=both).status_code == 200
    assert error_of(admin.get("/v1/costs", params=[("by", "tag"), ("by", "day")]), 422)
    assert error_of(admin.get("/v1/schedules/sch_unknown"), 404)["field"] == "schedule_id"
    assert error_of(admin.get("/v1/nowhere"), 404)
    assert error_of(admin.delete("/v1/jobs"), 405)


def test_rate_limit_answers_429_with_retry_after(
    env: dict[str, str], tmp_path: Path, store: RedisStore
) -> None:
    # Two gateway processes: the bucket is in Redis, so they share it.
    gw = start_gateway(env, tmp_path, store, workers=2, GATEWAY_RATE_PER_SECOND="0.2",
                       GATEWAY_RATE_BURST="3")  # fmt: skip
    try:
        api = gw.client("read")
        # A new connection per request, so the kernel spreads them over both processes.
        answers = [httpx.get(f"{gw.url}/v1/jobs", headers=api.headers) for _ in range(4)]
        assert [a.status_code for a in answers[:3]] == [200, 200, 200]
        limited = error_of(answers[3], 429)
        assert limited["type"] == "rate_limited"
        assert 1 <= int(answers[3].headers["Retry-After"]) <= 5
        # Another token has its own bucket.
        assert gw.client("read").get("/v1/jobs").status_code == 200
    finally:
        gw.proc.stop()


def test_the_access_log_leaves_out_the_passed_health_probe(gateway: Gateway) -> None:
    for _ in range(3):
        assert httpx.get(f"{gateway.url}/healthz", timeout=30).status_code == 200
    assert gateway.client("read").get("/v1/jobs?limit=1").status_code == 200
    # One process answers in turn: once the last request's line is there, so would be the
    # probes' lines.
    wait_for(lambda: '"GET /v1/jobs?limit=1 HTTP/1.1" 200' in gateway.proc.text(), 30, "its line")
    assert "/healthz" not in gateway.proc.text()


def test_unavailable_store_is_503_and_a_crash_is_500_without_traceback(
    env: dict[str, str], tmp_path: Path, store: RedisStore
) -> None:
    dead = {**env, "REDIS_URL": f"redis://127.0.0.1:{free_port()}/0"}
    gw = start_gateway(dead, tmp_path, store)
    try:
        assert error_of(httpx.get(f"{gw.url}/healthz", timeout=30), 503)["type"] == "unavailable"
        # A failed probe is news: its access line stays.
        wait_for(lambda: '"GET /healthz HTTP/1.1" 503' in gw.proc.text(), 30, "the probe's line")
        auth = {"Authorization": "Bearer orch_x"}
        down = httpx.get(f"{gw.url}/v1/jobs", headers=auth, timeout=30)
        error_of(down, 503)
    finally:
        gw.proc.stop()

    # An unexpected exception: 500 in the one shape, the traceback only in the log.
    from fastapi.testclient import TestClient

    settings = load_settings(redis_url=env["REDIS_URL"], key_prefix=env["KEY_PREFIX"],
                             workers_api_url=env["WORKERS_API_URL"],
                             workers_api_key=env["WORKERS_API_KEY"])  # fmt: skip
    app = create_app(settings)

    @app.get("/boom")
    def boom() -> None:
        raise RuntimeError("secret internals")

    with TestClient(app, raise_server_exceptions=False) as client:
        crashed = client.get("/boom")
    assert error_of(crashed, 500) == {
        "type": "internal_error", "field": None, "message": "internal error"
    }  # fmt: skip
    assert "secret internals" not in crashed.text


def test_tenant_isolation(gateway: Gateway) -> None:
    a, b = gateway.client("submit", tenant="acme"), gateway.client("submit", tenant="globex")
    admin = gateway.client("admin")
    job_a = a.post("/v1/jobs", json={"input": "for acme"}).json()
    assert job_a["tags"]["tenant"] == "acme"  # forced by the server
    job_b = b.post("/v1/jobs", json={"input": "for globex", "tags": {"tenant": "globex"}}).json()
    refused = a.post("/v1/jobs", json={"input": "as globex", "tags": {"tenant": "globex"}})
    assert error_of(refused, 403)["field"] == "tags"
    for path in ("", "/history", "/files", "/events", "/email"):
        assert error_of(a.get(f"/v1/jobs/{job_b['id']}{path}"), 404)["field"] == "job_id"
    assert error_of(a.post(f"/v1/jobs/{job_b['id']}/links"), 404)
    cont = a.post("/v1/jobs/continue", json={"worker": job_b["id"], "input": "more"})
    assert error_of(cont, 404)
    assert [j["id"] for j in a.get("/v1/jobs").json()["jobs"]] == [job_a["id"]]
    assert a.get("/v1/jobs", params={"tag": "tenant=globex"}).json()["jobs"] == []
    assert {j["id"] for j in admin.get("/v1/jobs").json()["jobs"]} == {job_a["id"], job_b["id"]}
    for path in ("/v1/schedules", "/v1/costs", "/v1/budgets", "/v1/limits"):
        assert error_of(a.get(path), 403)["type"] == "forbidden"
    # One idempotency key, two tenants: two jobs, neither sees the other's.
    ka = a.post("/v1/jobs", json={"input": "same"}, headers={"Idempotency-Key": "shared"})
    kb = b.post("/v1/jobs", json={"input": "same"}, headers={"Idempotency-Key": "shared"})
    assert ka.status_code == kb.status_code == 202 and ka.json()["id"] != kb.json()["id"]


def test_roles(gateway: Gateway) -> None:
    reader, submitter, admin = (gateway.client(r) for r in ("read", "submit", "admin"))
    assert reader.get("/v1/costs").status_code == 200
    cap = {"scope": "tag:tenant=acme", "limit_usd": "12.50"}
    assert error_of(submitter.put("/v1/budgets", json=cap), 403)
    made = admin.put("/v1/budgets", json=cap)
    assert made.status_code == 200 and made.json()["limit_usd"] == "12.50"
    assert [r["scope"] for r in reader.get("/v1/budgets").json()] == ["tag:tenant=acme"]
    assert error_of(admin.put("/v1/budgets", json={**cap, "limit_usd": "nan"}), 400)
    fine = error_of(admin.put("/v1/budgets", json={**cap, "limit_usd": "1.0000001"}), 400)
    assert fine["field"] == "limit_usd" and "micro-dollar" in fine["message"]
    assert error_of(reader.put("/v1/limits", json={"key": "budget:low", "limit": 2}), 403)
    assert admin.put("/v1/limits", json={"key": "budget:low", "limit": 2}).json()["changed"]
    assert reader.get("/v1/limits").json()[0]["limit"] == 2
    assert error_of(admin.put("/v1/limits", json={"key": "budget:low", "limit": 10**20}), 400)
    assert admin.delete("/v1/limits", params={"key": "budget:low"}).json()["changed"] is True
    costs = reader.get("/v1/costs", params={"by": "day", "since": "2026-01-01",
                                            "until": "2026-01-03"})  # fmt: skip
    assert costs.status_code == 200 and costs.json()["by"] == "day"



@pytest.mark.parametrize("path", ["/v1/costs", "/v1/costs/daily"])
@pytest.mark.parametrize("value", [
    "2026-11-01T00:00:00", "2026-11-01T00:00:00Z", "2026-11-01 00:00", "1793491200", "2026-11-1",
])  # fmt: skip
def test_a_day_parameter_is_exactly_yyyy_mm_dd(gateway: Gateway, path: str, value: str) -> None:
    """A date-time at midnight and a Unix timestamp were taken as a day: the CLI and
    the Python facade refuse both."""
    reader = gateway.client("read")
    for field, other in (("since", "until"), ("until", "since")):
        refused = error_of(reader.get(path, params={field: value, other: "2026-11-02"}), 422)
        assert refused["field"] == field and "YYYY-MM-DD" in refused["message"], refused
    fine = reader.get(path, params={"since": "2026-11-01", "until": "2026-11-02"})
    assert fine.status_code == 200, fine.text

def test_tokens_cli_create_list_revoke(
    gateway: Gateway, env: dict[str, str], store: RedisStore, tmp_path: Path
) -> None:
    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "orchestrator", "tokens", *args], env=env,
                              capture_output=True, text=True, timeout=60)  # fmt: skip

    made = cli("create", "--role", "read", "--tenant", "acme", "--name", "dash", "--json")
    assert made.returncode == 0, made.stderr
    record = json.loads(made.stdout)
    token = record["token"]
    assert record["role"] == "read" and record["tenant"] == "acme" and "sha256" not in record
    headers = {"Authorization": f"Bearer {token}"}
    assert httpx.get(f"{gateway.url}/v1/jobs", headers=headers).status_code == 200
    listed = cli("list", "--json")
    assert listed.returncode == 0 and token not in listed.stdout
    assert record["id"] in [r["id"] for r in json.loads(listed.stdout)]
    # Redis holds only the token's hash.
    for key in store.r.scan_iter(f"{store.keys.prefix}:*"):
        kind = store.r.type(key)
        value = json.dumps(store.r.hgetall(key)) if kind == "hash" else store.r.get(key)
        assert kind not in ("hash", "string") or token not in value, key
    assert cli("create", "--role", "boss").returncode == 2
    for bad in ("tok_0000", "tok_\uff21\uff22", "tok_" + "0" * 17, "x" * 5000):
        refused = cli("revoke", bad, "--json")
        assert refused.returncode == 2, bad
        assert json.loads(refused.stderr)["error"]["field"] == "id", refused.stderr
    unknown = cli("revoke", "tok_" + "0" * 16, "--json")
    assert unknown.returncode == 2
    assert json.loads(unknown.stderr)["error"]["type"] == "not_found", unknown.stderr
    revoked = cli("revoke", record["id"])
    assert revoked.returncode == 0, revoked.stderr
    # A process may pass a token it holds for GATEWAY_TOKEN_CACHE_SECONDS (1 s) more.
    deadline = time.monotonic() + 1.0 + 2.0
    while (answer := httpx.get(f"{gateway.url}/v1/jobs", headers=headers)).status_code == 200:
        assert time.monotonic() < deadline, "a revoked token still passes"
        time.sleep(0.05)
    assert error_of(answer, 401)
    assert token not in gateway.proc.text()
