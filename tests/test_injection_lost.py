"""A job Redis lost (a host crash under ``appendfsync everysec`` loses its last second)
while one of its steps was under way: the step's late writes make nothing that never
expires, and what the job held is given back (RELIABILITY.md, found and fixed 24).

Same parts as :mod:`tests.test_injection`: the hostile upstream over real HTTP, a real
Redis, the task steps through their real Celery task functions.
"""

from __future__ import annotations

from typing import Any

from orchestrator.runtime import Runtime
from orchestrator.store.holdings import Holdings
from workers_tasks import tasks

from .hostile_api import HostileAPI
from .injection import api as api  # the fixtures: the hostile upstream, a runtime
from .injection import follow, started, streamed, submit
from .injection import make_rt as make_rt


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


