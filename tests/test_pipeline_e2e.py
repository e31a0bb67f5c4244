"""End to end: real Redis, real `celery worker` processes, the emulator over HTTP."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from orchestrator.celery import celery_config
from orchestrator.errors import UnknownIdError
from orchestrator.facade import Orchestrator
from orchestrator.ledger import FIELDS
from orchestrator.settings import load_settings
from orchestrator.wire.models import Worker

from .conftest import Emulator
from .processes import Proc, celery_worker, wait_for

pytestmark = pytest.mark.slow


def assert_updates_exact(orch: Orchestrator, job_id: str, expected: int) -> None:
    job = orch.get(job_id)
    assert job.worker_id
    got = list(orch.updates(job_id, block=False))
    indices = [i for i, _ in got]
    start = job.update_from or 0
    assert indices == list(range(start, start + expected)), indices
    assert orch.store.relayed(job.worker_id) == start + expected


def ledger_matches(orch: Orchestrator, emulator: Emulator) -> None:
    total = orch.costs(by="day")["total"]
    truth = emulator.ledger()
    for field in FIELDS:
        if field in truth:
            assert total[field] == truth[field], (field, total[field], truth[field])
    assert total["turns"] == truth["turns_completed"]


def test_fifty_jobs_complete_exactly(
    orch: Orchestrator, emulator: Emulator, env: dict[str, str], tmp_path: Path
) -> None:
    emulator.configure(turn_seconds=0.5, events_per_turn=8)
    worker = celery_worker(env, tmp_path / "worker.log").start()
    try:
        jobs = [
            orch.submit(
                f"task {i}",
                budget="low" if i % 2 else "high",
                tags={"tenant": "acme" if i % 3 else "globex"},
                fetch_files=(i == 0),
            )
            for i in range(50)
        ]
        for job in jobs:
            done = orch.wait(job.id, timeout=120)
            assert done.status == "completed", (done.status, done.error)
        for job in jobs:
            assert_updates_exact(orch, job.id, 8)
        ledger = emulator.ledger()
        assert ledger["workers_created"] == 50 and ledger["turns_completed"] == 50
        ledger_matches(orch, emulator)
        by_tag = {r["key"]: r["turns"] for r in orch.costs(by="tag")["rows"]}
        assert by_tag == {"tenant=acme": 33, "tenant=globex": 17}
        by_budget = {r["key"]: r["turns"] for r in orch.costs(by="budget")["rows"]}
        assert by_budget == {"low": 25, "high": 25}
        # Files of job 0 were fetched, nested and binary, hashes recorded.
        files = wait_for(
            lambda: len(orch.files(jobs[0].id)) >= 2 and orch.files(jobs[0].id), 30, "files fetched"
        )
        for name, info in files.items():
            assert "sha256" in info, (name, info)
            assert Path(info["path"]).is_relative_to(Path(env["FILES_DIR"]).resolve())
            assert Path(info["path"]).stat().st_size == info["size"]
        # Continue the first worker: a second turn, counted once more.
        nxt = orch.continue_(jobs[1].id, "and once more", budget="low")
        assert orch.wait(nxt.id, timeout=60).status == "completed"
        assert_updates_exact(orch, nxt.id, 8)
        ledger_matches(orch, emulator)
    finally:
        worker.stop()


def test_sigkill_worker_loses_nothing(
    orch: Orchestrator, emulator: Emulator, env: dict[str, str], tmp_path: Path
) -> None:
    emulator.configure(turn_seconds=2.0, events_per_turn=20)
    emulator.faults(
        rate_lost_response=0.2, rate_cut_stream=0.1, rate_429=0.1, retry_after_seconds=0.1, seed=5
    )
    first: Proc = celery_worker(env, tmp_path / "w1.log", name="w1").start()
    jobs = [orch.submit(f"kill test {i}", tags={"tenant": "t"}) for i in range(20)]
    try:
        # Kill while creates are in flight and streams are being followed.
        wait_for(
            lambda: sum(orch.get(j.id).status == "running" for j in jobs) >= 3,
            60,
            "some jobs running",
        )
        first.kill()
    finally:
        first.kill()
    second = celery_worker(env, tmp_path / "w2.log", name="w2").start()
    try:
        for job in jobs:
            done = orch.wait(job.id, timeout=150)
            assert done.status == "completed", (done.status, done.error)
        for job in jobs:
            assert_updates_exact(orch, job.id, 20)
        ledger = emulator.ledger()
        assert ledger["workers_created"] == len(jobs)
        ledger_matches(orch, emulator)
    finally:
        second.stop()


def test_a_worker_killed_mid_create_is_redelivered_even_if_it_held_the_restore_lock(
    orch: Orchestrator, emulator: Emulator, env: dict[str, str], tmp_path: Path
) -> None:
    """The create task of a SIGKILLed worker comes back after the visibility timeout,
    even when the worker died inside kombu's restore pass, holding its Redis lock."""
    emulator.faults(rate_slow=1.0, slow_seconds=3.0)
    first: Proc = celery_worker(env, tmp_path / "w1.log", name="w1").start()
    try:
        job = orch.submit("killed mid-create")
        wait_for(lambda: orch.get(job.id).attempts == 1, 30, "the create call in flight")
        options = celery_config(orch.settings)["broker_transport_options"]
        lock = orch.store.keys.broker_prefix + "unacked_mutex"
        orch.store.r.set(lock, "a-dead-worker", ex=options["unacked_mutex_expire"])
        first.kill()
    finally:
        first.kill()
    # The dead worker's message is held unacked, readable (a lost-task sweep spares it).
    assert ("workers.create", [job.id]) in orch.store.broker.held_tasks()
    emulator.faults(rate_slow=0.0)
    second = celery_worker(env, tmp_path / "w2.log", name="w2").start()
    try:
        # Visibility timeout (10 s) plus the lock's life plus the turn: well inside this.
        assert orch.wait(job.id, timeout=60).status == "completed"
        assert_updates_exact(orch, job.id, 5)
        assert emulator.ledger()["workers_created"] == 1
    finally:
        second.stop()


def test_permanent_errors_fail_at_once(
    orch: Orchestrator, emulator: Emulator, env: dict[str, str], tmp_path: Path
) -> None:
    bad_env = {**env, "WORKERS_API_KEY": "sk-wrong-key"}
    worker = celery_worker(bad_env, tmp_path / "bad.log").start()
    try:
        job = orch.submit("will be refused")
        done = orch.wait(job.id, timeout=30)
        assert done.status == "failed" and done.error and "401" in done.error
        assert done.attempts == 1
    finally:
        worker.stop()
    assert emulator.ledger()["workers_created"] == 0
    worker = celery_worker(env, tmp_path / "good.log").start()
    try:
        # Unknown here and upstream: refused before anything is enqueued.
        with pytest.raises(UnknownIdError):
            orch.continue_("wrk_does_not_exist", "hello")
        # Known here (a job of ours ran it) but gone upstream: the task's 404 fails it.
        orch.store.save_snapshot(Worker(id="wrk_gone_upstream", status="completed"))
        missing = orch.continue_("wrk_gone_upstream", "hello")
        done = orch.wait(missing.id, timeout=30)
        assert done.status == "failed" and "404" in (done.error or ""), done.error
        assert done.attempts == 1
    finally:
        worker.stop()


def test_a_job_whose_retries_run_out_fails_and_frees_its_slot(
    orch: Orchestrator, emulator: Emulator, env: dict[str, str], tmp_path: Path
) -> None:
    """Celery re-raises the task's error, not MaxRetriesExceededError, when retries run
    out: the job must still end failed, with its hold and concurrency slot given back."""
    orch.limits.set("tag:tenant=acme", 1)
    orch.budgets.set_cap(scope="global", period="day", limit_usd="100")
    emulator.faults(rate_503=1.0)
    quick = {**env, "MAX_RETRIES": "0", "TASK_MAX_RETRIES": "1"}
    worker = celery_worker(quick, tmp_path / "w.log").start()
    try:
        doomed = orch.submit("never answered", tags={"tenant": "acme"})
        done = orch.wait(doomed.id, timeout=60)
        assert done.status == "failed", (done.status, done.error)
        assert "gave up after 1 retries" in (done.error or ""), done.error
        # The slot and hold are given back just after the status moves.
        wait_for(lambda: [r["running"] for r in orch.limits.status()] == [0], 10, "slot freed")
        assert [r["reserved_micro"] for r in orch.budgets.status()] == [0]
        emulator.faults(rate_503=0.0)
        after = orch.wait(orch.submit("now fine", tags={"tenant": "acme"}).id, timeout=60)
        assert after.status == "completed", (after.status, after.error)
    finally:
        worker.stop()


def test_job_whose_task_was_never_sent_is_sent_again(
    orch: Orchestrator, emulator: Emulator, env: dict[str, str], tmp_path: Path
) -> None:
    from orchestrator.jobs.model import validate_submission

    # A producer that died between writing the job and sending its task.
    sub = validate_submission(1000, input="orphan", budget="low")
    job, created = orch.store.create_job(sub)
    assert created and orch.store.unsent(0) == [job.id]
    worker = celery_worker({**env, "RESEND_AFTER_SECONDS": "1"}, tmp_path / "w.log").start()
    try:
        assert orch.wait(job.id, timeout=30).status == "completed"
        assert orch.store.unsent(0) == []
        assert emulator.ledger()["workers_created"] == 1
    finally:
        worker.stop()


def test_a_task_the_broker_lost_is_sent_again_but_a_backlog_is_not(
    orch: Orchestrator, emulator: Emulator, env: dict[str, str], tmp_path: Path
) -> None:
    """kombu loses a message when a worker dies between popping it and recording it as
    unacked. Jobs sent but never begun are sent again once the ``api`` queue is empty;
    while they wait in the queue (a backlog) nothing is sent twice."""
    fast = {**env, "RESEND_AFTER_SECONDS": "1"}
    queue = orch.store.keys.broker_queue("api")
    r = orch.store.r
    # Housekeeping runs in the streams worker; nobody consumes ``api`` yet: a backlog.
    streams = celery_worker(fast, tmp_path / "s.log", queues="streams", name="s").start()
    try:
        jobs = [orch.submit(f"lost {i}") for i in range(3)]
        wait_for(lambda: len(orch.store.untaken(1500)) == 3, 30, "the jobs to be overdue")
        time.sleep(1.0)  # three more housekeeping passes (every 0.5 s) over overdue jobs
        assert r.llen(queue) == 3, "a job waiting in a backlog was sent twice"
        r.delete(queue)  # the broker lost them
        wait_for(lambda: r.llen(queue) == 3, 30, "the lost tasks to be sent again")
        assert streams.text().count("the broker lost its first task") == 3
    finally:
        streams.stop()
    worker = celery_worker(fast, tmp_path / "w.log", queues="api,streams").start()
    try:
        for job in jobs:
            assert orch.wait(job.id, timeout=60).status == "completed"
        assert emulator.ledger()["workers_created"] == 3
        wait_for(lambda: orch.store.untaken(0) == [], 10, "nothing left to watch")
    finally:
        worker.stop()


def test_fault_storm_all_jobs_finish_with_exact_ledger(
    orch: Orchestrator, emulator: Emulator, env: dict[str, str], tmp_path: Path
) -> None:
    emulator.configure(turn_seconds=0.6, events_per_turn=12)
    emulator.faults(
        rate_429=0.25, rate_500=0.1, rate_503=0.1, rate_cut_stream=0.3, rate_slow=0.05,
        slow_seconds=0.3, rate_lost_response=0.1, retry_after_seconds=0.2, seed=21,
    )  # fmt: skip
    worker = celery_worker(env, tmp_path / "w.log").start()
    try:
        jobs = [orch.submit(f"storm {i}", budget="standard") for i in range(20)]
        for job in jobs:
            done = orch.wait(job.id, timeout=120)
            assert done.status == "completed", (done.status, done.error)
            assert_updates_exact(orch, job.id, 12)
        requests = emulator.ledger()["requests_by_route"]
        statuses = {s for by_status in requests.values() for s in by_status}
        assert {"429", "500", "503"} <= {str(s) for s in statuses}, requests
        assert emulator.ledger()["workers_created"] == 20
        ledger_matches(orch, emulator)
    finally:
        worker.stop()


def test_api_key_appears_nowhere_in_redis(
    orch: Orchestrator, emulator: Emulator, env: dict[str, str], tmp_path: Path
) -> None:
    import redis as redis_lib

    key = env["WORKERS_API_KEY"]
    # Leave messages on the broker too: submit with no worker running first.
    queued = [orch.submit(f"secret audit {i}", tags={"tenant": "audit"}) for i in range(3)]
    r = redis_lib.Redis.from_url(env["REDIS_URL"])

    def scan_all() -> int:
        hits = 0
        for name in r.scan_iter(count=1000):
            kind = r.type(name).decode()
            if kind == "string":
                values = [r.get(name) or b""]
            elif kind == "hash":
                values = [k + b"=" + v for k, v in r.hgetall(name).items()]
            elif kind == "list":
                values = r.lrange(name, 0, -1)
            elif kind == "set":
                values = list(r.smembers(name))
            elif kind == "zset":
                values = [m for m, _ in r.zrange(name, 0, -1, withscores=True)]
            elif kind == "stream":
                values = [str(f).encode() for _, f in r.xrange(name)]
            else:
                values = []
            hits += sum(key.encode() in v for v in [name, *values])
        return hits

    # The task messages are there to be scanned.
    assert r.llen(orch.store.keys.broker_queue("api")) >= 3
    assert scan_all() == 0
    worker = celery_worker(env, tmp_path / "w.log").start()
    try:
        for job in queued:
            assert orch.wait(job.id, timeout=60).status == "completed"
    finally:
        worker.stop()
    assert scan_all() == 0
    assert key not in (tmp_path / "w.log").read_text()


def test_deployments_sharing_a_redis_never_take_each_others_tasks(
    orch: Orchestrator, emulator: Emulator, env: dict[str, str], tmp_path: Path
) -> None:
    """Two key prefixes on one Redis: the other deployment's worker leaves our queued
    job alone (its broker keys live under its own prefix), and ours runs it."""
    other_env = {**env, "KEY_PREFIX": env["KEY_PREFIX"] + "-other"}
    other = Orchestrator(load_settings(
        redis_url=env["REDIS_URL"], key_prefix=other_env["KEY_PREFIX"],
        workers_api_url=env["WORKERS_API_URL"], workers_api_key=env["WORKERS_API_KEY"],
    ))  # fmt: skip
    ours = orch.submit("ours, sent first")
    theirs = other.submit("theirs, sent second")
    worker = celery_worker(other_env, tmp_path / "other.log", name="other").start()
    try:
        assert other.wait(theirs.id, timeout=60).status == "completed"
        assert orch.get(ours.id).status == "queued"
        assert orch.store.r.llen(orch.store.keys.broker_queue("api")) == 1
    finally:
        worker.stop()
        other.close()
    assert ours.id not in worker.log.read_text()
    mine = celery_worker(env, tmp_path / "ours.log", name="ours").start()
    try:
        assert orch.wait(ours.id, timeout=60).status == "completed"
    finally:
        mine.stop()


def test_clean_worker_stop_hands_streams_over_at_once(
    orch: Orchestrator, emulator: Emulator, env: dict[str, str], tmp_path: Path
) -> None:
    emulator.configure(turn_seconds=4.0, events_per_turn=20)
    slow_lease = {**env, "FOLLOW_LEASE_SECONDS": "120"}
    first = celery_worker(slow_lease, tmp_path / "w1.log", name="w1").start()
    jobs = [orch.submit(f"handover {i}") for i in range(5)]
    try:
        wait_for(lambda: all(orch.get(j.id).status == "running" for j in jobs), 30, "running")
    finally:
        first.stop()  # warm shutdown: leases are handed back, not left to lapse (120 s)
    second = celery_worker(slow_lease, tmp_path / "w2.log", name="w2").start()
    try:
        for job in jobs:
            assert orch.wait(job.id, timeout=40).status == "completed"
            assert_updates_exact(orch, job.id, 20)
    finally:
        second.stop()


def test_the_follower_settles_a_turn_or_hands_it_to_the_task(
    orch: Orchestrator, emulator: Emulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    from orchestrator import runtime
    from orchestrator.jobs.model import validate_submission
    from orchestrator.wire.models import Worker
    from workers_tasks import follower_service

    emulator.configure(turn_seconds=0.0, events_per_turn=2)
    sent: list[tuple[str, list[str]]] = []

    class Producer:
        def send_task(self, name: str, args: list[str], **_: object) -> None:
            sent.append((name, args))

    monkeypatch.setattr(follower_service, "app", Producer())
    monkeypatch.setattr(runtime, "get_runtime", lambda: orch.rt)

    def a_job(worker: Worker) -> str:
        sub = validate_submission(1000, kind="create", input="settle me", budget="low")
        job, _ = orch.store.create_job(sub)
        orch.store.set_submitted(job, worker)
        return job.id

    done = a_job(orch.rt.client.create("settle me", budget="low"))
    follower_service.settle(done)
    assert orch.get(done).status == "completed" and sent == []
    assert orch.costs(by="worker")  # the turn reached the ledger
    lost = a_job(Worker(id="wrk_nobody_knows"))
    follower_service.settle(lost)  # the API says 404: the task takes over
    assert sent == [("workers.finalize", [lost])]
    assert orch.get(lost).status == "submitted"
