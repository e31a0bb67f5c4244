"""End to end on each deployment topology (``tests/topologies.py``): one Redis; RabbitMQ as
the broker with a Redis store; Redis under Sentinel with its primary SIGKILLed mid-run; a
Redis Cluster store (RabbitMQ the broker) with the primary of the store's hash tag
SIGKILLed mid-run and its replica promoted. Real ``celery worker`` and ``beat``
processes, the emulator over HTTP.

On every topology: jobs complete, each update is stored once and in order, the ledger
equals the upstream's to the micro-dollar, a budget cap is never passed, and each
schedule slot fires once. On RabbitMQ: a SIGKILLed worker's task goes back to its queue
at once (no visibility timeout) and runs once more, creating no second upstream worker.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

import pytest

from orchestrator.celery import BATCH_QUEUE, make_app
from orchestrator.facade import Orchestrator
from orchestrator.ledger import COST_FIELDS
from orchestrator.ops.collector import read_snapshot
from orchestrator.ops.rabbitmq import RabbitQueues
from orchestrator.ops.sentinel import SentinelGroup
from orchestrator.runtime import store_for
from orchestrator.store.connection import StoreError, connect
from orchestrator.store.schedules import ScheduleStore

from .conftest import Emulator
from .processes import broker_depth, celery_beat, celery_worker, wait_for
from .test_pipeline_e2e import assert_updates_exact, ledger_matches
from .topologies import TOPOLOGIES, Topology, topology

pytestmark = pytest.mark.slow

CAP_USD = Decimal("0.5")
CAPPED = {"tenant": "capped"}


@pytest.fixture(params=TOPOLOGIES)
def deployment(
    request: pytest.FixtureRequest,
    redis_url: str,
    key_prefix: str,
    emulator: Emulator,
    tmp_path: Path,
) -> Iterator[Topology]:
    with topology(
        request.param, redis_url, key_prefix, emulator.url, emulator.api_key, tmp_path
    ) as t:
        yield t


@pytest.fixture
def orch(deployment: Topology) -> Iterator[Orchestrator]:
    with Orchestrator(deployment.settings) as o:
        yield o


def test_jobs_updates_money_caps_and_schedules_hold(
    deployment: Topology, orch: Orchestrator, emulator: Emulator, tmp_path: Path
) -> None:
    env = deployment.env
    emulator.configure(turn_seconds=1.0, events_per_turn=8)
    orch.budgets.set_cap(scope="tag:tenant=capped", limit_usd=CAP_USD)
    # A cap on everything, never reached: with cells it is held and counted in the
    # control keys, and must count every turn of every cell once.
    orch.budgets.set_cap(scope="global", limit_usd="1000")
    worker = celery_worker(env, tmp_path / "worker.log").start()
    beat = celery_beat(env, tmp_path / "beat.log").start()
    every = {"type": "interval", "intervalSeconds": 1}
    sid = orch.schedules.create(None, "tick", every, budget="low").id
    try:
        free = [
            orch.submit(f"job {i}", tags={"tenant": f"t{i % 3}"},
                        priority="batch" if i % 2 else "interactive")
            for i in range(24)
        ]  # fmt: skip
        capped = [orch.submit(f"capped {i}", budget="low", tags=CAPPED) for i in range(6)]
        wait_for(
            lambda: sum(orch.get(j.id).status == "running" for j in free) >= 4, 60, "jobs running"
        )
        if deployment.failover is not None:
            seconds = deployment.failover()
            print(f"\n{deployment.name}: a new primary answered {seconds:.2f} s after the kill")
            assert seconds < 20
        for job in free:
            done = orch.wait(job.id, timeout=120)
            assert done.status == "completed", (deployment.name, done.status, done.error)
            assert_updates_exact(orch, job.id, 8)
        outcomes = {j.id: orch.wait(j.id, timeout=60) for j in capped}
        # Three runs recorded, at least one of them after the failover: slots the old
        # primary took with it (asynchronous replication) are not recorded, and a beat
        # whose tick met "no master" ticks again once the sentinels have one.
        start = len(orch.schedules.history(sid, limit=10_000))
        wait_for(
            lambda: len(orch.schedules.history(sid, limit=10_000)) >= max(3, start + 1),
            60, "schedule runs after the failover",
        )  # fmt: skip
    finally:
        beat.stop()
    try:
        # Capped jobs: completed within the cap, or refused without going upstream.
        refused = [j for j in outcomes.values() if j.status == "failed"]
        assert all("budget cap" in (j.error or "") and j.attempts == 0 for j in refused)
        assert all(j.status in ("completed", "failed") for j in outcomes.values())
        spent = {r["key"]: r for r in orch.costs(by="tag")["rows"]}["tenant=capped"]
        assert spent["turns"] == len(capped) - len(refused)
        # Schedule slots: each claimed slot ran once and its job completed.
        ss = ScheduleStore(orch.store)
        wait_for(lambda: not broker_depth(env) and not ss.pending(), 60, "runs taken")
        runs = orch.schedules.history(sid, limit=10_000)
        slots = [r["slot_ms"] for r in runs]
        assert len(slots) >= 3 and len(slots) == len(set(slots)), slots
        [schedule] = ss.many([sid])
        assert schedule.counts["duplicates"] == 0 and schedule.counts["claimed"] == len(slots)
        for run in runs:
            if run["job_id"]:
                assert orch.wait(run["job_id"], timeout=60).status == "completed"
        # Caps: never passed, nothing held once every job has ended, and the global
        # cap's spend (with cells: counted in the control keys) equal to the ledger's.
        caps = {row["scope"]: row for row in orch.budgets.status()}
        for cap in caps.values():
            assert cap["spent_micro"] <= cap["cap_micro"] and cap["reserved_micro"] == 0, cap
        total = orch.costs()["total"]
        assert caps["global"]["spent_micro"] == sum(total[f] for f in COST_FIELDS), caps
        # Money: every turn once, our ledger equal to the upstream's.
        ledger = emulator.ledger()
        assert ledger["turns_completed"] == ledger["turns_started"]
        ledger_matches(orch, emulator)
    finally:
        worker.stop()


@pytest.mark.parametrize("name", ["rabbitmq"])
def test_rabbitmq_gives_a_sigkilled_workers_task_back_at_once(
    name: str,
    redis_url: str,
    key_prefix: str,
    emulator: Emulator,
    tmp_path: Path,
) -> None:
    """The create task of a worker SIGKILLed mid-call is back on ``api`` as soon as its
    channel closes (no visibility timeout), runs again, and creates no second worker."""
    with topology(name, redis_url, key_prefix, emulator.url, emulator.api_key, tmp_path) as t:
        settings = t.settings
        with Orchestrator(settings) as orch:
            queues = RabbitQueues(settings.broker, settings.broker_secret())
            emulator.faults(rate_slow=1.0, slow_seconds=3.0)
            first = celery_worker(t.env, tmp_path / "w1.log", name="w1").start()
            try:
                job = orch.submit("killed mid-create")
                wait_for(lambda: orch.get(job.id).attempts == 1, 30, "the create call in flight")
                assert queues.waiting("api") == 0  # taken, unacked
                # The broker's password reached the worker by its environment only.
                secret = t.env["BROKER_PASSWORD"]
                assert secret not in Path(f"/proc/{first.pid}/cmdline").read_text()
                killed_at = time.monotonic()
                first.kill()
            finally:
                first.kill()
            wait_for(lambda: queues.waiting("api") == 1, 10, "the task back on its queue")
            back_after = time.monotonic() - killed_at
            print(f"\nback on the queue {back_after:.2f} s after the SIGKILL")
            assert back_after < settings.visibility_timeout
            emulator.faults(rate_slow=0.0)
            second = celery_worker(t.env, tmp_path / "w2.log", name="w2").start()
            try:
                assert orch.wait(job.id, timeout=60).status == "completed"
                assert orch.get(job.id).attempts == 2
                assert_updates_exact(orch, job.id, 5)
                assert emulator.ledger()["workers_created"] == 1
                ledger_matches(orch, emulator)
                assert all(secret not in w.text() for w in (first, second))
                # The lost-task sweeps have nothing to do on RabbitMQ.
                lost = orch.store.broker.lost([job.id], "x", 1, lambda *_: [], backlog_queue="api")
                assert lost == []
            finally:
                second.stop()
                queues.close()


@pytest.mark.parametrize("name", ["rabbitmq"])
def test_batch_tasks_go_to_their_own_quorum_queue(
    name: str, redis_url: str, key_prefix: str, emulator: Emulator, tmp_path: Path
) -> None:
    with topology(name, redis_url, key_prefix, emulator.url, emulator.api_key, tmp_path) as t:
        settings = t.settings
        app = make_app(settings)
        # Declared as a worker would (durable quorum queues), then published to.
        with app.connection_for_write() as conn:
            for queue in app.amqp.queues.values():
                assert queue.queue_arguments == {"x-queue-type": "quorum"} and queue.durable
                queue(conn.default_channel).declare()
        app.send_task("workers.create", args=["job_b"], priority=9)
        app.send_task("workers.create", args=["job_i"], priority=0)
        app.send_task("workers.follow", args=["job_f"], priority=9)
        store = store_for(settings)
        try:
            depth, unacked = store.broker.queue_figures(["api", "streams"])
            assert depth == {"api": 2, "streams": 1} and unacked == {}
            # The metrics read the same figures from RabbitMQ.
            snap = read_snapshot(store)
            assert snap.queue_depth == {"api": 2, "streams": 1} and snap.queue_unacked == {}
            assert RabbitQueues(settings.broker, settings.broker_secret())._depths(
                [BATCH_QUEUE]
            ) == {BATCH_QUEUE: 1}
        finally:
            store.close()


def test_sentinel_failover_loses_at_most_the_unreplicated_tail() -> None:
    """Measures the loss window of a failover: a writer INCRs a counter as fast as it
    can through the store's connection factory; the primary is SIGKILLed; acknowledged
    increments missing on the new primary are the writes lost (replication is
    asynchronous), and the time until writes succeed again is the outage."""
    with SentinelGroup() as group:
        client = connect(group.url)
        acked = 0
        stop = threading.Event()

        def write() -> None:
            nonlocal acked
            while not stop.is_set():
                try:
                    client.incr("probe")
                    acked += 1
                except StoreError:
                    time.sleep(0.01)

        writer = threading.Thread(target=write)
        writer.start()
        try:
            wait_for(lambda: acked >= 2000, 30, "writes flowing")
            before = acked
            killed = time.monotonic()
            group.wait_failover(group.kill_primary())
            wait_for(lambda: acked > before + 100, 30, "writes on the new primary")
            outage = time.monotonic() - killed
        finally:
            stop.set()
            writer.join(timeout=10)
        stored = int(client.get("probe") or 0)
        client.close()
        lost = max(acked - stored, 0)
        print(f"\nfailover: {acked} writes acked, {stored} on the new primary, {lost} lost; "
              f"writes resumed {outage:.2f} s after the kill")  # fmt: skip
        assert outage < 20
        # Asynchronous replication can lose only the tail the replica had not received.
        assert lost <= max(10, acked // 100), (acked, stored)
