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

import asyncio
import contextlib
import tracemalloc
from collections.abc import Callable, Iterator, Sequence
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from orchestrator import runtime as runtime_module
from orchestrator.celery import make_app
from orchestrator.errors import APIError, ResponseTooLargeError
from orchestrator.facade import Orchestrator
from orchestrator.jobs import steps
from orchestrator.jobs.follower import Follower
from orchestrator.jobs.model import Job, validate_submission
from orchestrator.ops.redis_server import free_port
from orchestrator.runtime import Runtime
from orchestrator.settings import Settings, load_settings
from orchestrator.store.follows import FollowStore, Pending
from orchestrator.store.holdings import Holdings
from orchestrator.store.jobs import RedisStore, connect
from orchestrator.wire.aclient import AsyncWorkersClient
from orchestrator.wire.client import WorkersClient
from orchestrator.wire.retry import RetryPolicy
from workers_tasks import tasks

from .held import assert_nothing_held, not_ended
from .hostile_api import HostileAPI, bombs
from .processes import celery_worker, stack_env, wait_for

MiB = 2**20
TENANT = {"tenant": "acme"}


class Injected(RuntimeError):
    """An exception raised in our own code on purpose."""


class FlakyStore(RedisStore):
    """The real store, with a method armed to raise :class:`Injected` ``n`` times, or
    to run a hook first (once: :meth:`before`)."""

    armed: dict[str, int]
    hooks: dict[str, Callable[[], Any]]

    def arm(self, method: str, times: int = 1) -> None:
        self.armed[method] = times

    def before(self, method: str, hook: Callable[[], Any]) -> None:
        self.hooks[method] = hook

    def _trip(self, method: str) -> None:
        hook = self.hooks.pop(method, None)
        if hook is not None:
            hook()
        left = self.armed.get(method, 0)
        if left:
            self.armed[method] = left - 1
            raise Injected(f"injected failure in {method}")

    def count_attempt(self, *args: Any, **kwargs: Any) -> int:
        self._trip("count_attempt")
        return super().count_attempt(*args, **kwargs)

    def set_submitted(self, *args: Any, **kwargs: Any) -> bool:
        self._trip("set_submitted")
        return super().set_submitted(*args, **kwargs)

    def settle_into(self, *args: Any, **kwargs: Any) -> Any:
        self._trip("settle_into")
        return super().settle_into(*args, **kwargs)

    def record_file(self, *args: Any, **kwargs: Any) -> bool:
        self._trip("record_file")
        return super().record_file(*args, **kwargs)

    def append_updates_into(self, *args: Any, **kwargs: Any) -> int:
        self._trip("append_updates_into")
        return super().append_updates_into(*args, **kwargs)


class FlakyFollows(FollowStore):
    """The follower's real store; its update writes fail ``fail_writes`` times, and
    ``before_write`` runs (once) before the first."""

    fail_writes = 0
    before_write: Callable[[], Any] | None = None

    async def append_updates(
        self, pending: Pending, maxlen: int, running: Sequence[str] = ()
    ) -> list[Any]:
        hook, self.before_write = self.before_write, None
        if hook is not None:
            hook()
        if self.fail_writes:
            self.fail_writes -= 1
            raise Injected("injected failure in append_updates")
        return await super().append_updates(pending, maxlen, running)


@pytest.fixture(scope="module")
def api() -> Iterator[HostileAPI]:
    with HostileAPI(event_gap=0.005) as server:
        server.drip_seconds = 0.2
        yield server


def settings_for(
    redis_url: str, prefix: str, url: str, files: Path, quick_relay: float = 0.0
) -> Settings:
    """The runtime's settings; the create task hands every stream to the followers
    (whose faults these tests inject) unless ``quick_relay`` says otherwise."""
    return load_settings(
        redis_url=redis_url, key_prefix=prefix, files_dir=files, workers_api_url=url,
        workers_api_key="sk-injection", max_retries=1, retry_initial_delay=0.01,
        retry_max_delay=0.02, http_deadline=0.6, file_deadline=1.0, file_max_bytes=MiB,
        task_max_retries=1, stream_max_parse_failures=2, stream_read_timeout=0.5,
        files_max_per_turn=25, quick_relay_seconds=quick_relay,
    )  # fmt: skip


@pytest.fixture
def make_rt(
    redis_url: str, key_prefix: str, api: HostileAPI, tmp_path: Path, monkeypatch: Any
) -> Iterator[Any]:
    """``make_rt(url=...)``: a runtime over a :class:`FlakyStore`, installed as the
    process runtime the task functions use; the tenant has 1 slot and a cap."""
    made: list[Runtime] = []

    def make(url: str | None = None, quick_relay: float = 0.0) -> Runtime:
        files = tmp_path / "files"
        settings = settings_for(redis_url, key_prefix, url or api.url, files, quick_relay)
        store = FlakyStore(connect(redis_url), key_prefix)
        store.armed, store.hooks = {}, {}
        rt = Runtime(settings, store)
        rt.limits.set("tag:tenant=acme", 1)
        rt.budgets.set_cap(scope="tag:tenant=acme", limit_usd=Decimal("100"))
        monkeypatch.setattr(runtime_module, "_runtime", rt)
        made.append(rt)
        return rt

    yield make
    for rt in made:
        rt.close()


DEAD = f"http://127.0.0.1:{free_port()}"  # nothing listens: connection refused


def submit(rt: Runtime, text: str, **fields: Any) -> Job:
    sub = validate_submission(10_000, input=text, tags=TENANT, budget="low", **fields)
    job, _ = rt.store.create_job(sub)
    rt.store.mark_sending(job.id)
    rt.store.mark_sent(job.id)
    return job


def follow(
    rt: Runtime, job_id: str, *, fail_writes: int = 0, seconds: float = 60,
    before_write: Callable[[], Any] | None = None,
) -> list[str]:  # fmt: skip
    """Run a real follower (in this process) until the job's turn is finalized, or for
    ``seconds`` at most; finalize runs through its task function. Its outcomes.
    ``before_write`` runs before the follower's first update write."""
    outcomes: list[str] = []
    settings = rt.settings
    assert settings.redis_url is not None

    async def run() -> None:
        follows = FlakyFollows.from_url(settings.redis_url or "", settings.key_prefix)
        follows.fail_writes = fail_writes
        follows.before_write = before_write
        done, stop = asyncio.Event(), asyncio.Event()

        async def finished(finished_id: str) -> None:
            result = await asyncio.to_thread(tasks.finalize.apply, args=[finished_id])
            outcomes.append(str(result.result))
            if outcomes[-1] != "refollow":
                done.set()

        async with AsyncWorkersClient.from_settings(settings) as client:
            follower = Follower(follows, client, finished, poll_seconds=0.05, lease_seconds=2,
                                max_parse_failures=settings.stream_max_parse_failures)  # fmt: skip
            task = asyncio.create_task(follower.run(stop))
            try:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(done.wait(), seconds)
            finally:
                stop.set()
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(task, 10)
                await follows.close()

    asyncio.run(run())
    return outcomes


def started(rt: Runtime, text: str, **fields: Any) -> Job:
    """A job whose create step ran through its task: returns it as stored."""
    job = submit(rt, text, **fields)
    tasks.create.apply(args=[job.id])
    return rt.store.require_job(job.id)


def error_of(rt: Runtime, job_id: str) -> str:
    return str(rt.store.require_job(job_id).error)


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


def streamed(rt: Runtime, text: str, **fields: Any) -> Job:
    """A submitted job whose stream the upstream has served whole (its turn is over)."""
    job = started(rt, text, **fields)
    assert job.status == "submitted" and job.worker_id is not None
    list(rt.client.stream_updates(job.worker_id))
    return job


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


# --- a job Redis lost: nothing left that never expires ------------------------------


def lose(rt: Runtime, job_id: str, worker_id: str = "") -> None:
    """What a host crash under ``appendfsync everysec`` loses of a job created in its
    last second: its record, its place in every set and what admit took; with
    ``worker_id`` also the worker's records (written after the job, so lost with it)."""
    r, keys = rt.store.r, rt.store.keys
    r.delete(keys.job(job_id), keys.job_files(job_id))
    for zset in (keys.jobs, keys.outbox, keys.dispatched, keys.begun, keys.jobs_live,
                 keys.jobs_ended, keys.follows, keys.budget_hold_times):  # fmt: skip
        r.zrem(zset, job_id)
    r.hdel(keys.follow_owners, job_id)
    r.hdel(keys.budget_holds, job_id)
    r.srem(keys.limit_running("tag:tenant=acme"), job_id)
    if worker_id:
        r.delete(keys.worker(worker_id), keys.updates(worker_id), keys.ledger("worker", worker_id))


#: Parts of the names of the keys that are one job's or one worker's.
RECORD_NAMES = (":job:", ":worker:", ":updates:", ":ledger:worker:", ":ledger-turn:")


def never_expiring(rt: Runtime) -> list[str]:
    """The job and worker keys of the prefix (a fresh one per test) with no expiry."""
    r = rt.store.r
    found = r.scan_iter(match=f"{rt.store.keys.prefix}:*", count=1000)
    named = [k for k in found if any(part in k for part in RECORD_NAMES)]
    return sorted(k for k in named if r.pttl(k) == -1)


def test_a_create_step_returning_after_redis_lost_its_job_writes_nothing(make_rt: Any) -> None:
    """The job was lost while its create call was upstream: the late ``set_submitted``
    made a partial job hash and a worker hash that nothing expired, and put the job up
    for following. Now it writes nothing, and the slot and hold are given back."""
    rt = make_rt()
    job = submit(rt, "ok#lost-at-submit")
    rt.store.before("set_submitted", lambda: lose(rt, job.id))
    assert tasks.create.apply(args=[job.id]).result == "unknown"
    assert rt.store.r.exists(rt.store.keys.job(job.id)) == 0
    assert never_expiring(rt) == []
    assert Holdings(rt.store).held([job.id]) == {}
    assert Holdings(rt.store).anywhere() == {}


def test_a_create_step_that_finds_its_job_lost_before_counting_calls_nothing(
    make_rt: Any, api: HostileAPI
) -> None:
    rt = make_rt()
    job = submit(rt, "ok#lost-at-count")
    created = len(api.workers)
    rt.store.before("count_attempt", lambda: lose(rt, job.id))
    assert tasks.create.apply(args=[job.id]).result == "unknown"
    assert len(api.workers) == created  # nothing was sent upstream
    assert never_expiring(rt) == []
    assert Holdings(rt.store).anywhere() == {}


def test_a_job_record_lost_while_followed_leaves_its_worker_to_expire(make_rt: Any) -> None:
    """The job's record went while its stream was followed (its worker linked, its
    records kept for the turn): the follower's next write is refused, the worker's
    hash and stream get the retention, and finalize drops the follow entry."""
    rt = make_rt()
    job = started(rt, "ok#lost-while-followed")
    assert job.status == "submitted" and job.worker_id is not None
    wkey = rt.store.keys.worker(job.worker_id)

    def drop_record() -> None:
        rt.store.r.delete(rt.store.keys.job(job.id))

    assert follow(rt, job.id, before_write=drop_record) == ["unknown"]
    assert never_expiring(rt) == []
    assert 0 < rt.store.r.pttl(wkey) <= rt.store.retention.ttl_ms({})
    assert rt.store.r.exists(rt.store.keys.updates(job.worker_id)) == 0  # nothing stored
    held = Holdings(rt.store).held([job.id]).get(job.id, [])
    assert "follow" not in held and "follow_owner" not in held, held
    # The prune pass is told, so the worker leaves the ledger's index with its row.
    assert rt.store.r.zscore(rt.store.keys.retention, f"{job.id}|{job.worker_id}") is not None


def test_a_turn_settled_after_redis_lost_its_job_is_posted_and_expires(
    make_rt: Any, api: HostileAPI
) -> None:
    """Finalize read the job, then Redis lost it and its worker's records: the turn is
    still posted (the upstream bills it) but what records it, the worker's hash and
    ledger row and the turn's own record, expires as the job's records would have."""
    rt = make_rt()
    job = streamed(rt, "ok#lost-at-settle")
    assert job.worker_id is not None
    rt.store.before("settle_into", lambda: lose(rt, job.id, job.worker_id or ""))
    tasks.finalize.apply(args=[job.id])
    posted = rt.store.turn_cost(job.id)
    assert posted is not None
    assert {k: posted[k] for k in api.billed[job.worker_id]} == api.billed[job.worker_id]
    assert never_expiring(rt) == []
    assert rt.store.r.exists(rt.store.keys.job(job.id)) == 0  # no partial hash


def test_a_file_recorded_after_its_job_ended_expires_with_it(make_rt: Any) -> None:
    """A fetch that ends after its job completed made the files hash then, after the
    job's end had set the expiry of its records: it never expired. And a fetch of a
    job Redis lost meanwhile records nothing."""
    rt = make_rt()
    job = streamed(rt, "ok#late-file")
    assert tasks.finalize.apply(args=[job.id]).result == "completed"
    tasks.fetch_file.apply(args=[job.id, "one.txt"])
    assert set(rt.store.files(job.id)) == {"one.txt"}
    assert never_expiring(rt) == []

    lost = streamed(rt, "ok#lost-file")
    assert tasks.finalize.apply(args=[lost.id]).result == "completed"
    rt.store.before("record_file", lambda: lose(rt, lost.id))
    tasks.fetch_file.apply(args=[lost.id, "one.txt"])
    assert rt.store.files(lost.id) == {}
    assert never_expiring(rt) == []


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


# --- bounds on JSON answers -------------------------------------------------------------


@pytest.mark.parametrize("text", ["create:gzip-bomb", "create:503-bomb"])
def test_a_json_answer_is_read_with_a_bound(api: HostileAPI, text: str) -> None:
    """A 64 KB answer that inflates to 64 MB: refused at the cap (a success) or read
    only for its head (an error), never held whole. Before: 64 MB in memory, and the
    padded Worker was accepted."""
    client = WorkersClient(api.url, "k", retry=RetryPolicy(max_retries=0),
                           answer_max_bytes=MiB)  # fmt: skip
    bombs()  # built before measuring (the server runs in this process)
    tracemalloc.start()
    try:
        with client, pytest.raises(APIError) as caught:
            client.create(f"{text}#bound")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 8 * MiB, f"peak {peak / MiB:.1f} MiB"
    if text == "create:gzip-bomb":
        assert isinstance(caught.value, ResponseTooLargeError)
        assert "passed the 1048576-byte limit" in str(caught.value)
    else:
        assert "HTTP 503" in str(caught.value)


def test_the_async_client_reads_a_json_answer_with_a_bound(api: HostileAPI) -> None:
    async def create() -> None:
        async with AsyncWorkersClient(api.url, "k", retry=RetryPolicy(max_retries=0),
                                      answer_max_bytes=MiB) as client:  # fmt: skip
            await client.create("create:gzip-bomb#async")

    with pytest.raises(ResponseTooLargeError, match="1048576-byte limit"):
        asyncio.run(create())


def test_only_the_encodings_we_inflate_are_asked_for(api: HostileAPI) -> None:
    """httpx asks for br and zstd too when their packages are installed; an answer in
    one of them would then reach the JSON parser undecoded and fail every job."""
    with WorkersClient(api.url, "k") as client:
        assert client._http.headers["accept-encoding"] == "gzip, deflate"
    client_async = AsyncWorkersClient(api.url, "k")
    assert client_async._http.headers["accept-encoding"] == "gzip, deflate"
    asyncio.run(client_async.aclose())


def test_a_gzip_bombed_stream_is_inflated_a_piece_at_a_time(make_rt: Any) -> None:
    """One event that inflates to 64 MB: a truncated record in its place (as an
    oversize event), and the client never holds the 64 MB. Before: httpx inflated each
    64 KB network chunk whole, 64 MB at once, ahead of the event bound."""
    rt = make_rt()
    job = started(rt, "stream:gzip-bomb#s")
    assert job.worker_id is not None
    bombs()

    async def read() -> list[Any]:
        async with AsyncWorkersClient(rt.settings.workers_api_url or "", "k",
                                      event_max_bytes=64 * 1024) as client:  # fmt: skip
            return [u.data async for u in client.stream_updates(str(job.worker_id))]

    tracemalloc.start()
    try:
        updates = asyncio.run(read())
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert updates[0] == {"n": 0} and updates[2] == {"n": 2}
    assert updates[1]["truncated"] is True and updates[1]["bytes"] == 64 * 2**20 + 2
    assert peak < 8 * MiB, f"peak {peak / MiB:.1f} MiB"
    assert follow(rt, job.id) == ["completed"]
    assert_nothing_held(rt.store, [job.id])


def test_a_turn_publishing_too_many_files_fetches_a_bounded_few(make_rt: Any) -> None:
    """120 listed names, 60 of them distinct: 25 fetches sent (FILES_MAX_PER_TURN), each
    name once, and a note in the job's history. Before: one fetch task per listed name,
    however many (a hostile listing could send a hundred thousand)."""
    rt = make_rt()
    job = streamed(rt, "files:many#cap", fetch_files=True)
    # Finalized here, with an app on the test's broker: the fetches wait in its queue.
    assert steps.finalize(rt, make_app(rt.settings), job.id) == "completed"
    assert rt.store.broker.waiting("api") == 25
    notes = [e["detail"] for e in rt.store.history(job.id) if e["detail"]]
    assert any("published 60 files; fetching the first 25" in n for n in notes), notes


def test_a_turn_that_never_ends_upstream_is_read_again_with_growing_pauses(
    make_rt: Any, api: HostileAPI
) -> None:
    """The stream closes at once and retrieve says running, for ever: the job stays
    followed (it ends by its deadline), but is read again with pauses doubling to 5 s,
    not in a tight loop (before: about 12 reads a second here)."""
    rt = make_rt()
    job = started(rt, "stream:closes-forever#quiet")
    outcomes = follow(rt, job.id, seconds=4)
    reads = api.calls[f"stream {rt.store.require_job(job.id).worker_id}"]
    assert set(outcomes) == {"refollow"} and 3 <= reads <= 7, (outcomes, reads)
    assert not_ended(rt.store, [job.id]) == {job.id: "submitted"}


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
