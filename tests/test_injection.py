"""Failure injection at every step: create, continue, follow (the stream read and the
store write), finalize (the retrieve and the settle batch) and fetch.

Each step meets each kind of failure: an error of the HTTP layer (no connection, a
timeout, 5xx after the retries run out, 4xx, a malformed answer) and an exception raised
in our own code. Afterwards the job is in an end state, or was retried to completion,
and :func:`tests.held.assert_nothing_held` finds nothing held: no budget hold, no
concurrency slot, no follow lease, no outbox/dispatched entry, no unbegun fetch.

The upstream is :class:`tests.hostile_api.HostileAPI` over real HTTP; Redis is real.
The task steps run through their real Celery task functions, applied in this process
(``Task.apply``: the task's own error mapping and retries, without a broker round trip);
``test_every_step_fails_cleanly_through_a_real_worker`` runs the same matrix through a
real ``celery worker`` process.
"""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from orchestrator.celery import make_app
from orchestrator.facade import Orchestrator
from orchestrator.settings import load_settings
from orchestrator.store.holdings import Holdings
from workers_tasks import tasks

from .held import assert_nothing_held, not_ended
from .hostile_api import HostileAPI
from .injection import (
    DEAD,
    TENANT,
    MiB,
    follow,
    started,
    streamed,
    submit,
)
from .injection import api as api  # the fixtures: the hostile upstream, a runtime
from .injection import make_rt as make_rt
from .processes import celery_worker, stack_env, wait_for

# --- create and continue ------------------------------------------------------------

FAILING_POSTS = [
    pytest.param(DEAD, "ok", "gave up after 1 retries", id="connect"),
    pytest.param(None, "create:drip", "deadline", id="timeout"),
    pytest.param(None, "create:500", "HTTP 500", id="5xx"),
    pytest.param(None, "create:400", "HTTP 400", id="4xx"),
    pytest.param(None, "create:truncated", "malformed answer", id="malformed"),
    pytest.param(None, "id:traversal", "not a worker id", id="unsafe-id"),
]


@pytest.mark.parametrize(("url", "text", "says"), FAILING_POSTS)
def test_a_failed_create_ends_the_job_and_frees_what_it_took(
    make_rt: Any, url: str | None, text: str, says: str
) -> None:
    rt = make_rt(url)
    job = started(rt, f"{text}#create")
    assert job.status == "failed" and says in str(job.error), job.error
    assert_nothing_held(rt.store, [job.id])


@pytest.mark.parametrize(("url", "text", "says"), FAILING_POSTS)
def test_a_failed_continue_ends_the_job_and_frees_what_it_took(
    make_rt: Any, api: HostileAPI, url: str | None, text: str, says: str
) -> None:
    first = make_rt()
    worker = first.client.create("ok#base")  # a worker the upstream knows
    rt = make_rt(url)
    job = submit(rt, f"{text}#continue", kind="continue", worker_id=worker.id)
    tasks.continue_.apply(args=[job.id])
    after = rt.store.require_job(job.id)
    assert after.status == "failed" and says in str(after.error), after.error
    assert_nothing_held(rt.store, [job.id])


def test_a_create_that_fails_once_is_retried_to_completion(make_rt: Any) -> None:
    rt = make_rt()
    job = started(rt, "create:500-then-ok#retried")
    assert job.status == "submitted"
    assert follow(rt, job.id) == ["completed"]
    assert rt.store.require_job(job.id).status == "completed"
    assert_nothing_held(rt.store, [job.id])


def test_our_own_error_in_the_create_step_is_retried_then_fails_the_job(make_rt: Any) -> None:
    """Before: the task was acked as failed and the job stayed queued with its slot and
    hold (every later job of the tenant waited for ever)."""
    rt = make_rt()
    rt.store.arm("set_submitted", 1)
    job = started(rt, "ok#own-once")
    assert job.status == "submitted"  # the retry went through, with the same key
    assert follow(rt, job.id) == ["completed"]
    assert_nothing_held(rt.store, [job.id])

    rt.store.arm("set_submitted", 5)
    job = started(rt, "ok#own-always")
    assert job.status == "failed" and "injected failure" in str(job.error), job.error
    assert_nothing_held(rt.store, [job.id])


# --- follow: the stream read and the store write -------------------------------------


@pytest.mark.parametrize(
    ("text", "status", "says"),
    [
        ("stream:404", "failed", "HTTP 404"),
        ("stream:nonjson", "failed", "unreadable after 2 tries"),
        ("stream:wrong-type", "failed", "expected an event stream"),
        ("stream:500-then-ok", "completed", None),
        ("stream:stall-then-ok", "completed", None),
        ("stream:cut-then-ok", "completed", None),
        ("stream:oversize", "completed", None),
    ],
)
def test_a_failed_stream_read_ends_the_job_and_frees_what_it_took(
    make_rt: Any, api: HostileAPI, text: str, status: str, says: str | None
) -> None:
    rt = make_rt()
    job = started(rt, f"{text}#follow")
    assert job.status == "submitted"
    follow(rt, job.id)
    after = rt.store.require_job(job.id)
    assert after.status == status, (after.status, after.error)
    assert after.worker_id is not None
    # Failed here or not, the turn ran upstream and is billed: its cost is posted.
    posted = rt.store.turn_cost(job.id)
    assert posted is not None, "the turn's cost was not posted"
    assert {k: posted[k] for k in api.billed[after.worker_id]} == api.billed[after.worker_id]
    if says:
        assert says in str(after.error), after.error
    else:
        relayed = [i for i, _ in rt.store.read_updates(after.worker_id)]
        assert relayed == list(range(len(relayed))) and len(relayed) >= 4
    assert_nothing_held(rt.store, [job.id])


def test_a_failed_update_write_is_replayed_to_completion(make_rt: Any) -> None:
    rt = make_rt()
    job = started(rt, "ok#write")
    assert follow(rt, job.id, fail_writes=2) == ["completed"]
    worker_id = rt.store.require_job(job.id).worker_id
    assert worker_id is not None
    assert [i for i, _ in rt.store.read_updates(worker_id)] == [0, 1, 2, 3]
    assert_nothing_held(rt.store, [job.id])


@pytest.mark.parametrize("url", [DEAD, None], ids=["connect", "5xx"])
def test_a_stream_that_never_answers_is_retried_and_stays_followed(
    make_rt: Any, url: str | None
) -> None:
    """No answer, or 5xx, for ever: the follower keeps trying (a long outage must not
    fail live turns) and the job keeps its lease, so it ends by its deadline."""
    rt = make_rt()
    job = started(rt, "stream:500#forever")
    if url is not None:  # the follower's upstream is away; create went through
        rt = make_rt(url)
    assert follow(rt, job.id, seconds=2.5) == []
    assert not_ended(rt.store, [job.id]) == {job.id: "submitted"}


# --- finalize: the retrieve and the settle batch --------------------------------------


@pytest.mark.parametrize(
    ("url", "text", "says"),
    [
        pytest.param(DEAD, "ok", "gave up after 1 retries", id="connect"),
        pytest.param(None, "retrieve:drip", "deadline", id="timeout"),
        pytest.param(None, "retrieve:500", "HTTP 500", id="5xx"),
        pytest.param(None, "retrieve:404", "HTTP 404", id="4xx"),
        pytest.param(None, "retrieve:truncated", "malformed answer", id="malformed"),
        pytest.param(None, "cost:1e308", "cost not posted", id="absurd-figure"),
    ],
)
def test_a_failed_finalize_ends_the_job_and_frees_what_it_took(
    make_rt: Any, url: str | None, text: str, says: str
) -> None:
    rt = make_rt()
    job = streamed(rt, f"{text}#finalize")
    if url is not None:
        rt = make_rt(url)
    tasks.finalize.apply(args=[job.id])
    after = rt.store.require_job(job.id)
    assert after.status == "failed" and says in str(after.error), after.error
    assert rt.store.turn_cost(job.id) is None  # nothing posted
    assert_nothing_held(rt.store, [job.id])


def test_our_own_error_in_the_settle_batch_is_retried_then_fails_the_job(make_rt: Any) -> None:
    rt = make_rt()
    job = streamed(rt, "ok#settle-once")
    rt.store.arm("settle_into", 1)
    assert tasks.finalize.apply(args=[job.id]).result == "completed"
    assert rt.store.turn_cost(job.id) is not None
    assert_nothing_held(rt.store, [job.id])

    job = streamed(rt, "ok#settle-always")
    rt.store.arm("settle_into", 5)
    tasks.finalize.apply(args=[job.id])
    after = rt.store.require_job(job.id)
    assert after.status == "failed" and "injected failure" in str(after.error), after.error
    assert_nothing_held(rt.store, [job.id])


@pytest.mark.parametrize("remains", [{}, {"worker_id": "wrk_lost1", "update_from": "0"}],
                         ids=["no-record", "worker-fields-only"])  # fmt: skip
def test_a_follow_entry_of_a_job_redis_lost_is_dropped_by_finalize(
    make_rt: Any, remains: dict[str, str]
) -> None:
    """Redis lost a job's record (a host crash under ``appendfsync everysec``) while its
    turn was handed to the followers: the hand-over still puts the stream up for
    following, and a create step that returns late writes its worker fields into a new,
    partial hash. Finalize finds no job and drops the follow entry; else a follower
    claims it again at every lease, for ever (the chaos host-crash run held it)."""
    rt = make_rt()
    job_id = "job_" + "0" * 32
    if remains:
        rt.store.r.hset(rt.store.keys.job(job_id), mapping=remains)
    rt.store.request_follow(job_id, now=True)
    assert tasks.finalize.apply(args=[job_id]).result == "unknown"
    assert rt.store.get_job(job_id) is None
    assert not_ended(rt.store, [job_id]) == {job_id: None}
    assert Holdings(rt.store).held([job_id]) == {}


# --- fetch: the file download ----------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "name", "says"),
    [
        pytest.param(DEAD, "any.txt", "ConnectError", id="connect"),
        pytest.param(None, "drip", "deadline", id="timeout"),
        pytest.param(None, "flaky", "HTTP 500", id="5xx"),
        pytest.param(None, "missing", "HTTP 404", id="4xx"),
        pytest.param(None, "bomb", "limit", id="gzip-bomb"),
        pytest.param(None, "huge", "limit", id="huge-length"),
        pytest.param(None, "redirect", "HTTP 302", id="redirect"),
    ],
)
def test_a_failed_fetch_is_recorded_and_leaves_nothing_held(
    make_rt: Any, url: str | None, name: str, says: str
) -> None:
    rt = make_rt()
    job = streamed(rt, "ok#fetch")
    assert tasks.finalize.apply(args=[job.id]).result == "completed"
    if url is not None:
        rt = make_rt(url)
    sent = rt.store.batch()
    rt.store.fetches_sent_into(sent, job.id, [name])
    sent.execute()
    tasks.fetch_file.apply(args=[job.id, name])
    info = rt.store.files(job.id)[name]
    assert says in str(info.get("error")), info
    assert_nothing_held(rt.store, [job.id])


def test_our_own_error_in_a_fetch_is_retried_then_recorded(make_rt: Any) -> None:
    """Before: an error of ours (a Redis blip) ended the fetch task with nothing in
    files(), although every fetch promises an entry."""
    rt = make_rt()
    job = streamed(rt, "ok#fetch-own")
    tasks.finalize.apply(args=[job.id])
    rt.store.arm("record_file", 1)
    assert "sha256" in tasks.fetch_file.apply(args=[job.id, "one.txt"]).result
    rt.store.arm("record_file", 2)  # the fetch's record and its retry's
    info = tasks.fetch_file.apply(args=[job.id, "two.txt"]).result
    assert "injected failure" in str(info["error"]), info
    assert set(rt.store.files(job.id)) == {"one.txt", "two.txt"}
    assert_nothing_held(rt.store, [job.id])


# --- the same matrix through a real worker process -------------------------------------

E2E = {
    "create:500": "failed", "create:400": "failed", "create:truncated": "failed",
    "create:drip": "failed", "create:short-body": "failed", "create:500-then-ok": "completed",
    "stream:404": "failed", "stream:nonjson": "failed", "stream:wrong-type": "failed",
    "stream:500-then-ok": "completed", "retrieve:500": "failed", "retrieve:404": "failed",
    "retrieve:truncated": "failed", "retrieve:500-then-ok": "completed",
    "cost:1e308": "failed", "files:404": "completed", "files:500": "completed",
    "files:gzip-bomb": "completed",
}  # fmt: skip


@pytest.mark.slow
def test_every_step_fails_cleanly_through_a_real_worker(
    redis_url: str, key_prefix: str, api: HostileAPI, tmp_path: Path
) -> None:
    env = stack_env(
        redis_url, key_prefix, api.url, "sk-injection", FILES_DIR=str(tmp_path / "files"),
        MAX_RETRIES="1", TASK_MAX_RETRIES="1", HTTP_DEADLINE="0.6", FILE_MAX_BYTES=str(MiB),
        FILE_DEADLINE="2", STREAM_MAX_PARSE_FAILURES="2", FOLLOW_LEASE_SECONDS="3",
    )  # fmt: skip
    settings = load_settings(redis_url=redis_url, key_prefix=key_prefix,
                             workers_api_url=api.url, workers_api_key="sk-injection")  # fmt: skip
    with Orchestrator(settings, app=make_app(settings)) as orch:
        orch.limits.set("tag:tenant=acme", 2)
        orch.budgets.set_cap(scope="tag:tenant=acme", limit_usd=Decimal("100"))
        worker = celery_worker(env, tmp_path / "worker.log", concurrency=4).start()
        try:
            jobs = {text: orch.submit(f"{text}#e2e", tags=TENANT, budget="low",
                                      fetch_files=text.startswith("files:")).id
                    for text in E2E}  # fmt: skip
            ends = {text: orch.wait(job_id, timeout=60) for text, job_id in jobs.items()}
            file_jobs = [jobs[t] for t in E2E if t.startswith("files:")]
            wait_for(lambda: all(orch.files(j) for j in file_jobs), 30, "every fetch recorded")
            wait_for(lambda: not orch.store.broker.waiting("api"), 30, "the api queue to drain")
        finally:
            worker.stop()
        assert {t: e.status for t, e in ends.items()} == E2E
        assert_nothing_held(orch.store, list(jobs.values()))


# --- the create task's quick relay (orchestrator.jobs.quick) -------------------------


@pytest.mark.parametrize(
    ("text", "status", "says"),
    [
        ("stream:404", "failed", "HTTP 404"),
        ("stream:nonjson", "failed", "unreadable after 2 tries"),
        ("stream:500-then-ok", "completed", None),
        ("stream:cut-then-ok", "completed", None),
        ("stream:oversize", "completed", None),
        ("retrieve:500-then-ok", "completed", None),
        ("retrieve:500", "failed", "HTTP 500"),
        ("cost:1e308", "failed", "cost not posted"),
    ],
)
def test_a_fault_met_by_the_create_tasks_relay_ends_like_the_followers_would(
    make_rt: Any, api: HostileAPI, text: str, status: str, says: str | None
) -> None:
    """The task relays and settles what ends at once; anything it cannot do (a stream
    that fails or is cut, a retrieve that fails) goes to the followers, whose retries
    and verdicts apply as for any stream: the end is the same, and nothing is held."""
    rt = make_rt(quick_relay=0.5)
    job = started(rt, f"{text}#quick")
    if not rt.store.require_job(job.id).done:  # handed over: the followers take it
        follow(rt, job.id)
    after = rt.store.require_job(job.id)
    assert after.status == status, (after.status, after.error)
    assert after.worker_id is not None
    if says:
        assert says in str(after.error), after.error
    else:
        relayed = [i for i, _ in rt.store.read_updates(after.worker_id)]
        assert relayed == list(range(len(relayed))) and len(relayed) >= 4
        posted = rt.store.turn_cost(job.id)
        assert posted is not None
        assert {k: posted[k] for k in api.billed[after.worker_id]} == api.billed[after.worker_id]
    assert_nothing_held(rt.store, [job.id])


def test_a_store_that_fails_under_the_quick_relay_hands_the_stream_over(make_rt: Any) -> None:
    rt = make_rt(quick_relay=0.5)
    rt.store.arm("append_updates_into", 1)
    job = started(rt, "ok#quick-store")
    assert rt.store.require_job(job.id).status in ("submitted", "running")
    assert rt.store.r.zscore(rt.store.keys.follows, job.id) == 0  # claimable at once
    assert follow(rt, job.id) == ["completed"]
    assert_nothing_held(rt.store, [job.id])
